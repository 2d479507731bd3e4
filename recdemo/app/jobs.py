"""The fine-tune queue: one background worker thread runs jobs one at a time, in FIFO order.

Fine-tuning must not run inside a Gradio event: the event would hold a worker for minutes and
the page could not serve recommendations meanwhile. Instead the UI submits a job here and polls
``snapshot(job_id)`` from a timer. The queue knows nothing about models: it calls a ``runner``
(``runner(job, progress, cancel) -> dict``) that the app context provides, so tests can pass a
fake one.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


@dataclass
class Job:
    id: str
    params: dict  # what the runner needs: dataset, tasks, steps, lora_r, lr, adapter name, ...
    status: str = QUEUED
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_s: float | None = None
    phase: str = ""
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) for the plot
    metrics: dict = field(default_factory=dict)  # last metrics reported during the run
    result: dict = field(default_factory=dict)  # what the runner returned
    error: str = ""  # the reason shown to the user when the job failed or was cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)


log = logging.getLogger("recdemo.app")
Runner = Callable[[Job, Callable[[dict], None], threading.Event], dict]


class FineTuneQueue:
    """FIFO queue of fine-tune jobs with a single worker thread (started on first submit)."""

    def __init__(self, runner: Runner, error_message: Callable[[BaseException], str] | None = None,
                 keep_finished: int = 50):
        self._runner = runner
        self._error_message = error_message or (lambda e: str(e) or type(e).__name__)
        self._keep = keep_finished
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- called from Gradio events (any thread) --
    def submit(self, params: dict) -> Job:
        with self._lock:
            if self._stopping:
                raise RuntimeError("the fine-tune queue is shutting down")
            job = Job(id=f"job-{next(self._ids)}", params=dict(params))
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="finetune-queue", daemon=True)
                self._thread.start()
            self._wakeup.notify()
            return job

    def position(self, job_id: str) -> int | None:
        """0 while running, 1.. = place in line (1 = next), None when finished or unknown."""
        with self._lock:
            return self._position(job_id)

    def cancel(self, job_id: str) -> bool:
        """Queued: removed at once. Running: the runner sees the event at its next step."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status in FINISHED:
                return False
            job.cancel.set()
            if job.status == QUEUED:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, "cancelled before it started")
            return True

    def snapshot(self, job_id: str) -> dict | None:
        """A consistent copy of the job's state for the UI (plain values only)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return {"id": job.id, "params": dict(job.params), "status": job.status, "step": job.step,
                    "total": job.total, "loss": job.loss, "eta_s": job.eta_s, "phase": job.phase,
                    "losses": list(job.losses), "metrics": dict(job.metrics),
                    "result": dict(job.result), "error": job.error,
                    "position": self._position(job_id),
                    "elapsed_s": ((job.finished or time.time()) - job.started) if job.started else 0.0}

    def active(self) -> list[dict]:
        """Snapshots of the running job and the waiting ones, in order."""
        with self._lock:
            ids = ([self._current.id] if self._current else []) + [j.id for j in self._waiting]
        return [s for s in (self.snapshot(i) for i in ids) if s]

    def running(self) -> str | None:
        with self._lock:
            return self._current.id if self._current else None

    def wait(self, job_id: str, timeout: float | None = None) -> dict | None:
        """Block until the job finishes (tests and scripts); returns its snapshot."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            snap = self.snapshot(job_id)
            if snap is None or snap["status"] in FINISHED:
                return snap
            if deadline is not None and time.time() > deadline:
                return snap
            time.sleep(0.05)

    def shutdown(self, cancel_running: bool = True, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            for job in list(self._waiting):
                job.cancel.set()
                self._finish(job, CANCELLED, "the app is shutting down")
            self._waiting.clear()
            if cancel_running and self._current is not None:
                self._current.cancel.set()
            self._wakeup.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- internals (callers hold self._lock unless said otherwise) --
    def _position(self, job_id: str) -> int | None:
        job = self._jobs.get(job_id)
        if job is None or job.status in FINISHED:
            return None
        if job is self._current:
            return 0
        try:
            return self._waiting.index(job) + 1
        except ValueError:
            return None

    def _finish(self, job: Job, status: str, error: str = "") -> None:
        job.status, job.error, job.finished = status, error, time.time()

    def _forget_old(self) -> None:
        done = [j for j in self._jobs.values() if j.status in FINISHED]
        for job in sorted(done, key=lambda j: j.created)[: max(0, len(done) - self._keep)]:
            del self._jobs[job.id]

    def _work(self) -> None:
        """Worker thread: take the oldest waiting job, run it, record how it ended; repeat."""
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._wakeup.wait()
                if self._stopping and not self._waiting:
                    return
                job = self._waiting.popleft()
                job.status, job.started = RUNNING, time.time()
                self._current = job
            status, error, result = self._run(job)  # outside the lock: polls stay responsive
            with self._lock:
                job.result = result
                self._finish(job, status, error)
                self._current = None

    def _run(self, job: Job) -> tuple[str, str, dict]:
        """Run one job; any exception becomes a FAILED job with a readable reason."""
        def progress(event: dict) -> None:
            with self._lock:
                job.step = int(event.get("step", job.step) or 0)
                job.total = int(event.get("total", job.total) or 0)
                job.phase = str(event.get("phase", job.phase) or "")
                if event.get("eta_s") is not None:
                    job.eta_s = float(event["eta_s"])
                if event.get("metrics"):
                    job.metrics = dict(event["metrics"])
                if event.get("loss") is not None:
                    job.loss = float(event["loss"])
                    if not job.losses or job.losses[-1][0] != job.step:  # run_finetune repeats it after validating
                        job.losses.append((job.step, job.loss))

        try:
            result = dict(self._runner(job, progress, job.cancel) or {})
        except Exception as e:  # noqa: BLE001 - the reason goes to the user; error_message logs a trace if unexpected
            reason = self._error_message(e)
            log.warning("fine-tune %s failed: %s", job.id, reason)
            return FAILED, reason, {}
        status = result.get("status", DONE)
        if status == CANCELLED or (job.cancel.is_set() and status != DONE):
            return CANCELLED, result.get("reason") or "cancelled; the previous adapters are unchanged", result
        if status != DONE:
            return FAILED, result.get("reason") or result.get("error") or f"the run ended with status {status!r}", result
        return DONE, "", result
