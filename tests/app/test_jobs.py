"""The fine-tune queue: FIFO, one at a time, progress, cancel, failures."""
import threading
import time

import pytest

from recdemo.app.jobs import FineTuneQueue


def stepping_runner(order, gate: threading.Event | None = None, steps=3):
    def run(job, progress, cancel):
        order.append(job.params["name"])
        if gate is not None:
            gate.wait(5)
        for s in range(1, steps + 1):
            if cancel.is_set():
                return {"status": "cancelled"}
            progress({"step": s, "total": steps, "loss": 1.0 / s, "eta_s": steps - s, "phase": "train"})
        return {"status": "done", "adapter": job.params["name"]}
    return run


@pytest.fixture
def queue_factory():
    made = []

    def make(runner, **kw):
        q = FineTuneQueue(runner, **kw)
        made.append(q)
        return q
    yield make
    for q in made:
        q.shutdown(timeout=2)


def test_runs_jobs_one_at_a_time_in_submission_order(queue_factory):
    order, gate = [], threading.Event()
    q = queue_factory(stepping_runner(order, gate))
    a, b, c = (q.submit({"name": n}) for n in "abc")
    deadline = time.time() + 5
    while q.position(a.id) != 0 and time.time() < deadline:
        time.sleep(0.01)
    assert (q.position(a.id), q.position(b.id), q.position(c.id)) == (0, 1, 2)
    assert q.snapshot(b.id)["status"] == "queued"
    gate.set()
    for j in (a, b, c):
        assert q.wait(j.id, timeout=5)["status"] == "done"
    assert order == ["a", "b", "c"]
    assert q.position(a.id) is None


def test_progress_is_recorded_for_the_plot(queue_factory):
    q = queue_factory(stepping_runner([], steps=4))
    job = q.submit({"name": "x"})
    snap = q.wait(job.id, timeout=5)
    assert snap["status"] == "done"
    assert snap["losses"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3)), (4, 0.25)]
    assert (snap["step"], snap["total"], snap["eta_s"]) == (4, 4, 0.0)
    assert snap["result"]["adapter"] == "x"


def test_cancel_waiting_job_removes_it_without_running(queue_factory):
    order, gate = [], threading.Event()
    q = queue_factory(stepping_runner(order, gate))
    a, b = q.submit({"name": "a"}), q.submit({"name": "b"})
    assert q.cancel(b.id)
    assert q.snapshot(b.id)["status"] == "cancelled"
    gate.set()
    assert q.wait(a.id, timeout=5)["status"] == "done"
    assert order == ["a"]
    assert not q.cancel(b.id)  # already finished


def test_cancel_running_job_stops_it_cleanly(queue_factory):
    started = threading.Event()

    def slow(job, progress, cancel):
        started.set()
        for s in range(1000):
            if cancel.is_set():
                return {"status": "cancelled"}
            progress({"step": s, "total": 1000, "loss": 1.0})
            time.sleep(0.005)
        return {"status": "done"}

    q = queue_factory(slow)
    job = q.submit({"name": "long", "steps": 1000})
    assert started.wait(5)
    assert q.cancel(job.id)
    snap = q.wait(job.id, timeout=5)
    assert snap["status"] == "cancelled"
    assert snap["step"] < 999
    assert "unchanged" in snap["error"]


def test_exception_becomes_failed_job_and_queue_keeps_working(queue_factory):
    calls = []

    def flaky(job, progress, cancel):
        calls.append(job.params["name"])
        if job.params["name"] == "bad":
            raise RuntimeError("disk full")
        return {"status": "done"}

    q = queue_factory(flaky, error_message=lambda e: f"sorry: {e}")
    bad, good = q.submit({"name": "bad"}), q.submit({"name": "good"})
    assert q.wait(bad.id, timeout=5)["error"] == "sorry: disk full"
    assert q.snapshot(bad.id)["status"] == "failed"
    assert q.wait(good.id, timeout=5)["status"] == "done"
    assert calls == ["bad", "good"]


def test_non_done_status_from_runner_is_a_failure_with_reason(queue_factory):
    q = queue_factory(lambda job, p, c: {"status": "failed", "reason": "loss became NaN"})
    snap = q.wait(q.submit({"name": "n"}).id, timeout=5)
    assert (snap["status"], snap["error"]) == ("failed", "loss became NaN")


def test_active_lists_running_then_waiting(queue_factory):
    gate = threading.Event()
    q = queue_factory(stepping_runner([], gate))
    a, b = q.submit({"name": "a"}), q.submit({"name": "b"})
    deadline = time.time() + 5
    while q.running() != a.id and time.time() < deadline:
        time.sleep(0.01)
    assert [s["id"] for s in q.active()] == [a.id, b.id]
    gate.set()
    q.wait(b.id, timeout=5)
    assert q.active() == []


def until_cancelled(order):
    """A runner that runs until it is cancelled (at most 5 s, then it says done)."""
    def run(job, progress, cancel):
        order.append(job.params["name"])
        return {"status": "cancelled"} if cancel.wait(5) else {"status": "done"}
    return run


def wait_running(q, job_id):
    deadline = time.time() + 5
    while q.running() != job_id and time.time() < deadline:
        time.sleep(0.01)
    assert q.running() == job_id


def test_shutdown_cancels_the_running_and_waiting_jobs_and_refuses_new_ones():
    order = []
    q = FineTuneQueue(until_cancelled(order))
    a, b = q.submit({"name": "a"}), q.submit({"name": "b"})
    wait_running(q, a.id)
    t0 = time.time()
    q.shutdown(timeout=5)
    assert time.time() - t0 < 4  # the running job stopped at the cancel, not at its 5 s timeout
    assert q.snapshot(a.id)["status"] == "cancelled"
    assert (q.snapshot(b.id)["status"], q.snapshot(b.id)["error"]) == ("cancelled", "the app is shutting down")
    assert order == ["a"]  # the waiting job never started
    with pytest.raises(RuntimeError):
        q.submit({"name": "c"})


def test_shutdown_can_let_the_running_job_finish():
    gate = threading.Event()
    q = FineTuneQueue(stepping_runner([], gate))
    a, b = q.submit({"name": "a"}), q.submit({"name": "b"})
    wait_running(q, a.id)
    threading.Timer(0.2, gate.set).start()
    q.shutdown(cancel_running=False, timeout=5)
    assert q.snapshot(a.id)["status"] == "done" and q.snapshot(b.id)["status"] == "cancelled"


def test_a_repeated_loss_at_the_same_step_is_one_point():
    def run(job, progress, cancel):
        for step, loss in ((1, 2.0), (2, 1.5), (2, 1.5), (3, 1.0)):  # step 2 is reported again after validation
            progress({"step": step, "total": 3, "loss": loss})
        return {"status": "done"}

    q = FineTuneQueue(run)
    snap = q.wait(q.submit({"name": "x"}).id, timeout=5)
    assert snap["losses"] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    q.shutdown(timeout=2)


def wait_until(predicate, timeout=5.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_n_jobs_run_at_once_and_the_rest_wait_in_order(queue_factory):
    order, gate = [], threading.Event()
    q = queue_factory(stepping_runner(order, gate), workers=2)
    jobs = [q.submit({"name": n}) for n in "abcd"]
    wait_until(lambda: len(order) == 2)
    time.sleep(0.1)
    assert sorted(order) == ["a", "b"]  # two run, the others wait their turn
    assert [q.position(j.id) for j in jobs] == [0, 0, 1, 2]
    gate.set()
    for j in jobs:
        assert q.wait(j.id, timeout=5)["status"] == "done"
    assert order[2:] == ["c", "d"]


def test_a_full_queue_refuses_more_with_one_sentence(queue_factory):
    from recdemo.app.jobs import QueueFull

    gate = threading.Event()
    q = queue_factory(stepping_runner([], gate), workers=1, max_waiting=2)
    running = q.submit({"name": "a"})
    wait_until(lambda: q.position(running.id) == 0)
    q.submit({"name": "b"})
    q.submit({"name": "c"})
    t0 = time.time()
    with pytest.raises(QueueFull, match=r"^The server's fine-tune queue is full \(2 waiting\); please try again later\.$"):
        q.submit({"name": "d"})
    assert time.time() - t0 < 0.5
    gate.set()
    assert q.wait(running.id, timeout=5)["status"] == "done"


def test_a_job_past_its_wall_time_is_cancelled_and_says_why(queue_factory):
    seen = []

    def slow(job, progress, cancel):
        for step in range(1, job.params["steps"]):
            if cancel.is_set():
                seen.append(step)
                return {"status": "cancelled"}
            progress({"step": step, "total": 1000})
            time.sleep(0.01)
        return {"status": "done"}

    q = queue_factory(slow, max_seconds=0.2)
    job = q.submit({"name": "long", "steps": 1000})
    snap = q.wait(job.id, timeout=5)
    assert snap["status"] == "cancelled" and seen and seen[0] < 100
    assert "minutes, this server's limit per fine-tune" in snap["error"] and "unchanged" in snap["error"]
    quick = q.submit({"name": "quick", "steps": 5})  # the limit is per job: a fresh clock for the next
    assert q.wait(quick.id, timeout=5)["status"] == "done"


def test_an_error_after_a_cancel_is_part_of_the_cancel(queue_factory):
    started = threading.Event()

    def runner(job, progress, cancel):
        started.set()
        cancel.wait(5)
        raise ValueError("Unknown dataset 'shop'")  # e.g. the closed session's upload is gone

    q = queue_factory(runner)
    job = q.submit({"name": "a"})
    assert started.wait(5) and q.cancel(job.id)
    snap = q.wait(job.id, timeout=5)
    assert snap["status"] == "cancelled" and "unchanged" in snap["error"]
