"""The coalescer: concurrent jobs with one key run as one batch, each caller gets its own result,
a bad job fails only its caller, nobody waits forever. Concurrency is made deterministic by holding
the gate (the model lock) while the callers queue, then letting go."""
import threading
import time

import pytest

from recdemo.llm.coalesce import Coalescer

TIMEOUT = 30


class Recorder:
    """``run``: records each batch; a payload "bad" fails its batch; "stop" interrupts it."""

    def __init__(self):
        self.batches = []

    def __call__(self, key, payloads):
        self.batches.append((key, list(payloads)))
        if "stop" in payloads:
            raise KeyboardInterrupt
        if "bad" in payloads:
            raise ValueError("bad job")
        return [f"{key}:{p}" for p in payloads]


def queued(c: Coalescer, jobs: list[tuple], gate) -> list:
    """Submit ``jobs`` ((key, payload, rows)) from one thread each while ``gate`` is held, let go
    once all are waiting; returns each job's result or exception, in order."""
    out = [None] * len(jobs)

    def call(i, key, payload, rows):
        try:
            out[i] = c.submit(key, payload, rows)
        except BaseException as e:  # noqa: BLE001 - the test compares them
            out[i] = e

    threads = [threading.Thread(target=call, args=(i, *job)) for i, job in enumerate(jobs)]
    with gate:
        for t in threads:
            t.start()
            # one at a time, so the queue order is the submission order
            deadline = time.time() + TIMEOUT
            while c.waiting < threads.index(t) + 1 and time.time() < deadline:
                time.sleep(0.001)
        assert c.waiting == len(jobs)
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a caller hangs"
    return out


def test_waiting_jobs_of_one_key_run_as_one_batch():
    gate, run = threading.RLock(), Recorder()
    c = Coalescer(run, max_rows=64, gate=gate)
    out = queued(c, [("k", f"p{i}", 1) for i in range(6)], gate)
    assert out == [f"k:p{i}" for i in range(6)]  # each caller its own result
    assert len(run.batches) == 1 and sorted(run.batches[0][1]) == [f"p{i}" for i in range(6)]
    assert (c.batches, c.jobs) == (1, 6)


def test_jobs_of_other_keys_are_not_merged_and_the_oldest_goes_first():
    gate, run = threading.RLock(), Recorder()
    c = Coalescer(run, gate=gate)
    out = queued(c, [("a", 1, 1), ("b", 2, 1), ("a", 3, 1), ("b", 4, 1)], gate)
    assert out == ["a:1", "b:2", "a:3", "b:4"]
    assert run.batches == [("a", [1, 3]), ("b", [2, 4])]


def test_a_batch_holds_at_most_max_rows_and_a_big_job_runs_alone():
    gate, run = threading.RLock(), Recorder()
    c = Coalescer(run, max_rows=4, gate=gate)
    out = queued(c, [("k", "x", 2), ("k", "y", 2), ("k", "z", 2), ("k", "big", 9), ("k", "w", 1)], gate)
    assert out == ["k:x", "k:y", "k:z", "k:big", "k:w"]
    sizes = [payloads for _, payloads in run.batches]
    assert sizes[0] == ["x", "y"]  # 2 + 2 rows; z would be 6
    assert ["big"] in sizes  # over the bound: alone, not refused
    assert all(sum(9 if p == "big" else 2 if p in "xyz" else 1 for p in b) <= 4 for b in sizes if b != ["big"])


def test_a_bad_job_fails_only_its_own_caller():
    gate, run = threading.RLock(), Recorder()
    c = Coalescer(run, gate=gate)
    out = queued(c, [("k", "a", 1), ("k", "bad", 1), ("k", "b", 1)], gate)
    assert out[0] == "k:a" and out[2] == "k:b"
    assert isinstance(out[1], ValueError) and str(out[1]) == "bad job"
    assert run.batches[0] == ("k", ["a", "bad", "b"])  # tried together first, then one by one
    assert run.batches[1:] == [("k", ["a"]), ("k", ["bad"]), ("k", ["b"])]


def test_an_interrupted_batch_never_leaves_a_caller_waiting():
    gate, run = threading.RLock(), Recorder()
    c = Coalescer(run, gate=gate)
    out = queued(c, [("k", "stop", 1), ("k", "a", 1)], gate)  # the first caller leads
    assert isinstance(out[0], KeyboardInterrupt)  # the leader sees the interrupt itself
    assert isinstance(out[1], RuntimeError)  # the other one an error, not a hang
    assert c.waiting == 0
    assert c.submit("k", "again") == "k:again"  # and the coalescer still works


def test_a_caller_holding_the_gate_or_inside_a_batch_runs_at_once():
    gate = threading.RLock()
    calls = []

    def run(key, payloads):
        calls.append(list(payloads))
        if payloads == ["outer"]:  # a batch that needs the coalescer again, twice
            return [c.submit(key, "inner") + c.submit(key, "again")]
        return [p.upper() for p in payloads]

    c = Coalescer(run, gate=gate)
    with gate:  # waiting for a leader that needs the gate would never end
        assert c.submit("k", "held") == "HELD"
    assert c.submit("k", "outer") == "INNERAGAIN"
    assert calls == [["held"], ["outer"], ["inner"], ["again"]]
    gateless = Coalescer(run)  # no gate to tell: the mark alone must last the whole outer batch
    c = gateless
    assert c.submit("k", "outer") == "INNERAGAIN"


def test_a_wrong_number_of_results_is_an_error_not_a_silent_mix_up():
    c = Coalescer(lambda key, payloads: ["only one"], gate=threading.RLock())
    gate = c._gate
    out = queued(c, [("k", 1, 1), ("k", 2, 1)], gate)
    assert out[0] == "only one" and out[1] == "only one"  # retried alone: one result each
    with pytest.raises(RuntimeError, match="a batch of 1 jobs returned 0 results"):
        Coalescer(lambda key, payloads: []).submit("k", 1)


def test_many_threads_without_a_gate_all_get_their_answers():
    """No forced queueing: whatever the interleaving, every caller gets its own result."""
    c = Coalescer(lambda key, payloads: [p * 2 for p in payloads], max_rows=3)
    results = {}

    def call(i):
        results[i] = c.submit(i % 2, i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert results == {i: 2 * i for i in range(40)}
    assert c.jobs == 40 and c.batches <= 40


def _submit_in_thread(c: Coalescer, key, payload, out: dict, ticket=None) -> threading.Thread:
    t = threading.Thread(target=lambda: out.__setitem__(payload, c.submit(key, payload, ticket=ticket)))
    t.start()
    return t


def test_a_leader_waits_for_an_open_tickets_job_and_runs_both_as_one_batch():
    """A request that will submit soon (its rerank still running) holds a ticket: the leader that
    finds the model free waits for that job instead of running alone."""
    run = Recorder()
    c = Coalescer(run, max_rows=64, gather_s=TIMEOUT)
    out: dict = {}
    ticket = c.expect("k")  # opened in this thread: the leader below runs in another one
    first = _submit_in_thread(c, "k", "early", out)
    time.sleep(0.2)
    assert run.batches == [] and c.waiting == 1  # the leader is waiting for the ticket's job
    second = _submit_in_thread(c, "k", "late", out, ticket=ticket)
    first.join(TIMEOUT), second.join(TIMEOUT)
    assert out == {"early": "k:early", "late": "k:late"}
    assert run.batches == [("k", ["early", "late"])] and ticket.closed


def test_a_ticket_closed_without_a_job_or_past_the_wait_releases_the_leader():
    run = Recorder()
    c = Coalescer(run, max_rows=64, gather_s=TIMEOUT)
    out: dict = {}
    with c.expect("k"):  # the request failed before its explanations: its ticket closes
        t = _submit_in_thread(c, "k", "a", out)
        time.sleep(0.1)
        assert run.batches == []
    t.join(TIMEOUT)
    assert out == {"a": "k:a"}
    short = Coalescer(run, max_rows=64, gather_s=0.05)
    forgotten = short.expect("k")  # never closed: the leader gives up after gather_s
    started = time.monotonic()
    assert short.submit("k", "b") == "k:b" and time.monotonic() - started < TIMEOUT / 2
    assert not forgotten.closed


def test_tickets_of_another_key_this_thread_or_a_full_batch_do_not_hold_the_leader():
    run = Recorder()
    c = Coalescer(run, max_rows=2, gather_s=TIMEOUT)
    other, mine = c.expect("other"), c.expect("k")  # another key; this thread's own ticket
    started = time.monotonic()
    assert c.submit("k", "alone") == "k:alone" and time.monotonic() - started < TIMEOUT / 2
    elsewhere = {}
    opener = threading.Thread(target=lambda: elsewhere.setdefault("t", c.expect("k")))
    opener.start(), opener.join(TIMEOUT)
    started = time.monotonic()
    assert c.submit("k", "full", rows=2) == "k:full"  # already max_rows: nothing more would fit
    assert time.monotonic() - started < TIMEOUT / 2
    for ticket in (other, mine, elsewhere["t"]):
        ticket.close()
        ticket.close()  # twice is harmless


def test_the_leader_counts_only_idle_model_time_and_stops_at_the_overall_limit():
    """While the model thread works (a ticket holder's rerank), the wait for that holder's job goes on
    past ``gather_s``; with the model idle it ends after ``gather_s``; never after ``gather_max_s``."""
    from recdemo.llm.coalesce import ModelThread

    thread = ModelThread("test-model")
    run = Recorder()
    c = Coalescer(run, max_rows=64, thread=thread, gather_s=0.2, gather_max_s=TIMEOUT)
    out: dict = {}
    ticket = c.expect("k")
    rerank_done = threading.Event()
    rerank = threading.Thread(target=lambda: thread.call(lambda: rerank_done.wait(TIMEOUT)))
    rerank.start()  # the holder's model work: 0.6 s, three times the idle allowance
    deadline = time.monotonic() + TIMEOUT
    while not thread.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    leader = _submit_in_thread(c, "k", "early", out)
    time.sleep(0.6)
    assert run.batches == [] and c.waiting == 1  # still waiting: the model was never idle
    rerank_done.set(), rerank.join(TIMEOUT)
    late = _submit_in_thread(c, "k", "late", out, ticket=ticket)
    leader.join(TIMEOUT), late.join(TIMEOUT)
    assert run.batches == [("k", ["early", "late"])]

    idle = Coalescer(run, max_rows=64, thread=thread, gather_s=0.2, gather_max_s=TIMEOUT)
    idle.expect("k").thread = -1  # another thread's ticket, never closed
    started = time.monotonic()
    assert idle.submit("k", "alone") == "k:alone" and 0.15 < time.monotonic() - started < TIMEOUT / 2

    capped = Coalescer(run, max_rows=64, thread=thread, gather_s=0.2, gather_max_s=0.3)
    capped.expect("k").thread = -1  # never closed
    busy_done = threading.Event()
    busy = threading.Thread(target=lambda: thread.call(lambda: busy_done.wait(TIMEOUT)))
    busy.start()
    while not thread.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("r", capped.submit("k", "capped")))
    waiter.start()
    time.sleep(0.8)
    assert thread.pending == 2  # the leader stopped waiting at 0.3 s and queued its batch behind the busy call
    busy_done.set(), busy.join(TIMEOUT), waiter.join(TIMEOUT)
    assert result == {"r": "k:capped"}


def test_an_idle_model_thread_keeps_nothing_of_its_last_job():
    """The thread lives as long as the program: the last job's closure (a service, its model) must not."""
    import gc
    import weakref

    from recdemo.llm.coalesce import ModelThread

    class Model:
        pass

    thread, model = ModelThread("test-model"), Model()
    gone = weakref.ref(model)
    assert thread.call(lambda m=model: id(m)) == id(model)  # the job itself holds the model
    del model
    deadline = time.monotonic() + TIMEOUT
    while gone() is not None and time.monotonic() < deadline:  # the thread drops it right after answering
        gc.collect()
        time.sleep(0.01)
    assert gone() is None
