"""The fine-tune queue: ``workers`` background threads run jobs in FIFO order; at most
``max_waiting`` wait (a submit beyond that is refused), and a job that runs longer than
``max_seconds`` is cancelled (its runner sees the cancel event, as for a user's Cancel).

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
    timed_out: bool = False  # cancelled because it ran past the queue's max_seconds


class QueueFull(ValueError):
    """Too many fine-tunes are waiting: the request is refused (one sentence for the user)."""


log = logging.getLogger("recdemo.app")
Runner = Callable[[Job, Callable[[dict], None], threading.Event], dict]


class FineTuneQueue:
    """FIFO queue of fine-tune jobs with ``workers`` threads (started on demand)."""

    def __init__(self, runner: Runner, error_message: Callable[[BaseException], str] | None = None,
                 keep_finished: int = 50, workers: int = 1, max_waiting: int | None = None,
                 max_seconds: float | None = None):
        self._runner = runner
        self._error_message = error_message or (lambda e: str(e) or type(e).__name__)
        self._keep = keep_finished
        self._workers = max(1, int(workers))
        self._max_waiting = max_waiting
        self._max_seconds = max_seconds
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._running: list[Job] = []
        self._ids = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- called from Gradio events (any thread) --
    def submit(self, params: dict) -> Job:
        with self._lock:
            if self._stopping:
                raise RuntimeError("the fine-tune queue is shutting down")
            if self._max_waiting is not None and len(self._waiting) >= self._max_waiting and \
                    len(self._running) >= self._workers:
                raise QueueFull(f"The server's fine-tune queue is full ({len(self._waiting)} waiting); "
                                "please try again later.")
            job = Job(id=f"job-{next(self._ids)}", params=dict(params))
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) < self._workers:
                thread = threading.Thread(target=self._work, name=f"finetune-queue-{len(self._threads) + 1}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
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
        """Snapshots of the running jobs and the waiting ones, in order."""
        with self._lock:
            ids = [j.id for j in self._running] + [j.id for j in self._waiting]
        return [s for s in (self.snapshot(i) for i in ids) if s]

    def running(self) -> str | None:
        """The oldest running job's id (None when none runs)."""
        with self._lock:
            return self._running[0].id if self._running else None

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
            if cancel_running:
                for job in self._running:
                    job.cancel.set()
            self._wakeup.notify_all()
            threads = list(self._threads)
        deadline = time.time() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.time()))

    # -- internals (callers hold self._lock unless said otherwise) --
    def _position(self, job_id: str) -> int | None:
        job = self._jobs.get(job_id)
        if job is None or job.status in FINISHED:
            return None
        if job in self._running:
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
                self._running.append(job)
            status, error, result = self._run_timed(job)  # outside the lock: polls stay responsive
            with self._lock:
                job.result = result
                self._finish(job, status, error)
                self._running.remove(job)

    def _run_timed(self, job: Job) -> tuple[str, str, dict]:
        """``_run`` with the wall-time limit: past it the job is cancelled and says why."""
        if not self._max_seconds:
            return self._run(job)

        def expire() -> None:
            job.timed_out = True
            job.cancel.set()

        timer = threading.Timer(self._max_seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            status, error, result = self._run(job)
        finally:
            timer.cancel()
        if job.timed_out and status != DONE:
            error = (f"stopped after {self._max_seconds / 60:g} minutes, this server's limit per fine-tune; "
                     "the previous adapters are unchanged")
            return CANCELLED, error, result
        return status, error, result

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
            if job.cancel.is_set():  # what it needed went away with the cancel (e.g. a closed session's upload)
                log.info("fine-tune %s stopped after its cancel: %s", job.id, e)
                return CANCELLED, "cancelled; the previous adapters are unchanged", {}
            reason = self._error_message(e)
            log.warning("fine-tune %s failed: %s", job.id, reason)
            return FAILED, reason, {}
        status = result.get("status", DONE)
        if status == CANCELLED or (job.cancel.is_set() and status != DONE):
            return CANCELLED, result.get("reason") or "cancelled; the previous adapters are unchanged", result
        if status != DONE:
            return FAILED, result.get("reason") or result.get("error") or f"the run ended with status {status!r}", result
        return DONE, "", result
