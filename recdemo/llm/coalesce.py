"""Concurrent callers share one model call: ``Coalescer.submit(key, job)`` blocks for that job's result.

Leader/follower, with no waiting window (unless tickets are open, below): a caller that finds nobody
running becomes the leader. The leader takes the ``gate`` (the model lock), then the oldest waiting
job and every other waiting job with the same key (at most ``max_rows`` rows), runs them as one
batch, hands each caller its result, and repeats until its own job is done; then a waiting caller
leads. Given a ``ModelThread`` (the served model's), the leader's batches run there while it waits:
every batch of every caller on one thread (see ``ModelThread`` for why that is faster on a CPU).
While a batch runs (or the model is busy with other work), new jobs queue, so a busy server runs
larger batches and an idle one adds no delay.

Tickets (``expect``): a caller that will submit a job of some key soon (a request whose explanations
follow its rerank) says so; a leader of that key waits for the open tickets' jobs (at most
``gather_s``, and not past ``max_rows``) before it takes the model. Without them, requests that
arrived together drifted apart: one request's explanations ran alone while the others were still
reranking, and every later call had one or two users instead of all (4 users: ~1.7 requests a call).

A batch that raises is retried one job at a time, so a bad job fails only its own caller; every
taken job is marked done whatever happens, so no caller waits forever.
"""
from __future__ import annotations

import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Hashable


GATHER_POLL_S = 0.05  # a gathering leader looks this often whether the model thread is working


@dataclass(eq=False)
class _Job:
    key: Hashable
    payload: Any
    rows: int
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    answered: bool = False


class ModelThread:
    """One long-lived thread that runs every batch of a served model (``call`` blocks the caller).

    Why: torch's CPU threads are OpenMP teams, one per thread that ever ran a parallel op; once a
    process has more OpenMP threads than CPUs, libgomp barely spins before a worker sleeps, so each
    small op of a decode step waits for a wake-up. A server whose request threads take turns leading
    the model made every batch ~40% slower than the same work in one thread (2 cores: 4 concurrent
    users 0.25 answers/s with each leader running its batch, 0.33 with one model thread;
    config.OPENMP_DEFAULTS lengthens the spin, this keeps the teams few)."""

    def __init__(self, name: str = "model"):
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._pending = 0  # calls queued or running

    @property
    def pending(self) -> int:
        """Calls queued or running on the thread."""
        return self._pending

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the model thread (at once when already on it); raises what it raised."""
        if threading.current_thread() is self._thread:
            return fn()
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
        done, box = threading.Event(), {}
        with self._start:
            self._pending += 1
        self._jobs.put((fn, box, done))
        try:
            done.wait()
        finally:
            with self._start:
                self._pending -= 1
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _serve(self) -> None:
        while True:
            fn, box, done = self._jobs.get()
            try:
                box["result"] = fn()
            except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
                box["error"] = e
            finally:
                done.set()
            # while idle, hold nothing of the last job: its closure reaches the service and its model,
            # which a replaced service would otherwise keep in memory for good
            fn = box = done = None


class Coalescer:
    """``run(key, payloads) -> results`` (one per payload, in order) runs a batch of same-key jobs."""

    def __init__(self, run: Callable[[Hashable, list], list], max_rows: int = 64, gate=None,
                 thread: ModelThread | None = None, gather_s: float = 0.0, gather_max_s: float | None = None):
        self._run = run
        self.max_rows = max(1, int(max_rows))
        # how long a leader waits for open tickets' jobs while the model is idle, and in all
        self.gather_s = max(0.0, float(gather_s))
        self.gather_max_s = max(self.gather_s, float(gather_max_s if gather_max_s is not None else gather_s))
        self._open: dict = {}  # key -> tickets not yet closed
        self._gate = gate  # held while a batch is taken and run (e.g. the service lock)
        self._thread = thread  # where batches run (the leader waits); None: in the leader's own thread
        self._cond = threading.Condition(threading.Lock())
        self._waiting: list[_Job] = []
        self._leading = False
        self._inside = threading.local()  # a batch's own submit runs at once (no waiting on itself)
        self.batches = 0  # batches run (retries one by one included); with ``jobs``, for tests and benches
        self.jobs = 0

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet taken into a batch."""
        with self._cond:
            return len(self._waiting)

    def expect(self, key: Hashable) -> "Ticket":
        """A ticket for a job of ``key`` this caller will submit soon (``submit(..., ticket=)``); close
        it (or leave its ``with``) if it will not."""
        ticket = Ticket(self, key)
        with self._cond:
            self._open.setdefault(key, []).append(ticket)
        return ticket

    def _close(self, ticket: "Ticket") -> None:
        """Caller holds ``_cond``."""
        if not ticket.closed:
            ticket.closed = True
            self._open[ticket.key].remove(ticket)
            if not self._open[ticket.key]:
                del self._open[ticket.key]
            self._cond.notify_all()

    def submit(self, key: Hashable, payload: Any, rows: int = 1, ticket: "Ticket | None" = None) -> Any:
        """The result of ``run(key, [payload])[0]``, possibly computed in a batch with other callers'
        jobs of the same key. Raises the job's own exception. ``ticket``: this job's (closed here)."""
        if getattr(self._inside, "active", False) or self._holds_gate():
            # a batch's own call, or a caller holding the model lock: waiting for a leader that
            # needs that lock would never end, so it runs at once, alone
            if ticket is not None:
                ticket.close()
            return self._call(key, [payload])[0]
        job = _Job(key, payload, max(1, int(rows)))
        with self._cond:
            self._waiting.append(job)
            if ticket is not None:
                self._close(ticket)
            while not job.done and self._leading:
                self._cond.wait()
            lead = not job.done
            if lead:
                self._leading = True
                self._gather(key)
        if lead:
            try:
                self._lead(job)
            finally:
                with self._cond:
                    self._leading = False
                    if not job.done:  # the leader was interrupted: nobody would read this job
                        self._waiting = [j for j in self._waiting if j is not job]
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _gather(self, key: Hashable) -> None:
        """Wait while other threads' tickets of ``key`` are open and their jobs would still fit the
        batch (this thread's own ticket waits for nothing: its job is this one, or comes after it):
        at most ``gather_s`` of time in which the model thread is idle, at most ``gather_max_s`` in all.
        While the model works (the ticket holders' reranks, most often) the wait costs no model time,
        so it is not counted: on a slow CPU a rerank batch outlasted a fixed 1 s and the requests of a
        room went on in pairs. Caller holds ``_cond``; the model is not held meanwhile, so the ticket
        holders' own model work goes on."""
        now = time.monotonic()
        end, idle_left = now + self.gather_max_s, self.gather_s
        me = threading.get_ident()

        def others() -> bool:
            return any(t.thread != me for t in self._open.get(key, ()))
        while others() and sum(j.rows for j in self._waiting if j.key == key) < self.max_rows:
            left = min(end - now, idle_left, GATHER_POLL_S)
            if left <= 0:
                return
            busy = self._thread is not None and self._thread.busy
            self._cond.wait(left)
            before, now = now, time.monotonic()
            if not busy:
                idle_left -= now - before

    def _holds_gate(self) -> bool:
        owned = getattr(self._gate, "_is_owned", None)  # RLock and Condition have it; a plain Lock not
        return bool(owned()) if owned is not None else False

    def _lead(self, own: _Job) -> None:
        def batches() -> None:
            while not own.done:
                with self._gate if self._gate is not None else nullcontext():
                    with self._cond:
                        batch = self._take()
                    self._execute(batch)
        if self._thread is None:
            batches()
        else:
            self._thread.call(batches)

    def _take(self) -> list[_Job]:
        """The oldest waiting job and the later ones with its key, within ``max_rows`` (the oldest
        always goes, however many rows it has). Caller holds ``_cond``."""
        first = self._waiting[0]
        batch, rows = [first], first.rows
        for job in self._waiting[1:]:
            if job.key == first.key and rows + job.rows <= self.max_rows:
                batch.append(job)
                rows += job.rows
        taken = set(map(id, batch))
        self._waiting = [j for j in self._waiting if id(j) not in taken]
        return batch

    def _call(self, key, payloads: list) -> list:
        outer, self._inside.active = getattr(self._inside, "active", False), True
        try:
            results = list(self._run(key, payloads))
        finally:
            self._inside.active = outer  # a nested call must not end its outer batch's mark
        if len(results) != len(payloads):
            raise RuntimeError(f"a batch of {len(payloads)} jobs returned {len(results)} results")
        return results

    def _execute(self, batch: list[_Job]) -> None:
        try:
            self.batches += 1
            self.jobs += len(batch)
            results = self._call(batch[0].key, [j.payload for j in batch])
        except Exception as e:  # noqa: BLE001 - handed to the callers it belongs to
            if len(batch) == 1:
                batch[0].error, batch[0].answered = e, True
            else:  # find the bad job: the others still get their answers
                self.jobs -= len(batch)
                for job in batch:
                    self._execute([job])
        else:
            for job, result in zip(batch, results):
                job.result, job.answered = result, True
        finally:  # also on KeyboardInterrupt & co: a job without a result gets an error, never a hang
            with self._cond:
                for job in batch:
                    if not job.answered:
                        job.error = RuntimeError("the batch holding this request was interrupted")
                    job.done = True
                self._cond.notify_all()


class Ticket:
    """A caller's word that a job of ``key`` follows soon (``Coalescer.expect``); closing it twice is
    harmless, and leaving its ``with`` closes it."""

    def __init__(self, owner: Coalescer, key: Hashable):
        self.owner, self.key, self.closed = owner, key, False
        self.thread = threading.get_ident()  # who opened it

    def close(self) -> None:
        with self.owner._cond:
            self.owner._close(self)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
