"""LLMService: one lazily loaded base model, adapters by context, batched greedy generation."""
from __future__ import annotations

import threading

import pytest
import torch
from conftest import make_tiny_adapter, queue_while_busy

from recdemo.config import LLMConfig
from recdemo.errors import ModelNotFound
from recdemo.llm.service import LLMService


def last_logits(llm):
    with torch.inference_mode():
        return llm.model(torch.tensor([[4, 8, 15, 16, 23]])).logits[0, -1].clone()


def test_model_is_loaded_lazily_from_a_local_folder(tiny_llm, tmp_path):
    folder = tmp_path / "tiny"
    tiny_llm.model.save_pretrained(folder, safe_serialization=True)
    tiny_llm.tokenizer.save_pretrained(folder)
    svc = LLMService(LLMConfig(model=str(folder), device="cpu", dtype="float32", adapter_dir=str(tmp_path / "none")))
    assert not svc.loaded
    assert svc.available_adapters() == []  # listing adapters does not load the model
    assert not svc.loaded
    assert torch.allclose(last_logits(svc.llm), last_logits(tiny_llm), atol=1e-5)
    assert svc.describe().endswith("on cpu (float32)")


def test_use_adapter_activates_then_restores(tiny_service, tmp_path):
    make_tiny_adapter(tiny_service.llm, tmp_path / "adapters" / "toy")
    base = last_logits(tiny_service.llm)
    with tiny_service.use_adapter("toy") as llm:
        assert tiny_service.adapters.active == "toy"
        tuned = last_logits(llm)
        with tiny_service.base_model():  # nested: the bare base model inside an adapter block
            assert torch.allclose(last_logits(llm), base, atol=1e-6)
        assert torch.allclose(last_logits(llm), tuned, atol=1e-6)
    assert tiny_service.adapters.active is None
    assert not torch.allclose(tuned, base, atol=1e-4)
    assert torch.allclose(last_logits(tiny_service.llm), base, atol=1e-6)


def test_use_adapter_holds_the_lock(tiny_service):
    got = []
    with tiny_service.base_model():
        t = threading.Thread(target=lambda: got.append(tiny_service.lock.acquire(timeout=0.2)))
        t.start()
        t.join()
    assert got == [False]  # another thread could not take the model mid-call
    assert tiny_service.lock.acquire(timeout=1)
    tiny_service.lock.release()


def test_resolve_adapter(tiny_service, tmp_path):
    assert tiny_service.resolve_adapter("auto", "toy") is None  # nothing shipped: base model
    assert tiny_service.resolve_adapter("none", "toy") is None
    assert tiny_service.resolve_adapter(None, "toy") is None
    with pytest.raises(ModelNotFound, match="finetune"):
        tiny_service.resolve_adapter("missing", "toy")
    make_tiny_adapter(tiny_service.llm, tmp_path / "adapters" / "toy")
    assert tiny_service.resolve_adapter("auto", "toy") == "toy"  # the adapter named like the dataset
    assert tiny_service.resolve_adapter("auto", "other") is None
    assert tiny_service.resolve_adapter("auto", "toy", "score") == "toy"  # no ranker-specific one: the dataset's
    make_tiny_adapter(tiny_service.llm, tmp_path / "adapters" / "toy-score")
    assert tiny_service.resolve_adapter("auto", "toy", "score") == "toy-score"  # trained on that ranker's prompt
    assert tiny_service.resolve_adapter("auto", "toy", "palr") == "toy"


def test_register_adapter_makes_a_new_folder_available(tiny_service, tmp_path):
    folder = make_tiny_adapter(tiny_service.llm, tmp_path / "elsewhere" / "fresh")
    assert "fresh" not in tiny_service.available_adapters()
    assert tiny_service.register_adapter(folder) == "fresh"
    assert "fresh" in tiny_service.available_adapters()
    with tiny_service.use_adapter("fresh"):
        assert tiny_service.adapters.active == "fresh"


def test_batched_generation_matches_one_by_one(tiny_service):
    prompts = ["Keywords: Comedy", "A user watched these movies, oldest first", "Summary"]
    batched = tiny_service.generate(prompts, max_new_tokens=6)
    single = [tiny_service.generate([p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single  # left padding does not change greedy answers
    assert any(batched)


def test_stop_strings_cut_the_answer(tiny_service):
    prompt = ["Keywords: Comedy"]
    text = tiny_service.generate(prompt, max_new_tokens=12)[0]
    at = next(i for i in range(2, len(text)) if text[i] not in text[:i])  # a character first seen mid-answer
    cut = tiny_service.generate(prompt, max_new_tokens=12, stop_strings=[text[at]])[0]
    assert cut == text[:at]
    assert tiny_service.generate([], max_new_tokens=4) == []


def test_stop_strings_and_the_predicate_end_each_row_on_its_own(tiny_service):
    texts = tiny_service.generate(["Alpha Bravo", "Castle"], max_new_tokens=12, stop_strings=["a", "e"],
                                  stop_when=lambda t: len(t) > 30)
    assert len(texts) == 2 and all("a" not in t and "e" not in t for t in texts)
    with pytest.raises(TypeError, match="no other options"):
        tiny_service.generate(["Castle"], max_new_tokens=4, do_sample=True)


def test_a_path_is_refused_before_the_model_loads(tiny_llm, tmp_path):
    """The API's adapter="/etc" is answered at once: the model is not loaded, no folder is read."""
    folder = make_tiny_adapter(tiny_llm, tmp_path / "elsewhere" / "real")
    svc = LLMService(LLMConfig(model=str(tmp_path / "no-model"), adapter_dir=str(tmp_path / "adapters")))
    for requested in ("/etc", "/no/such/dir", "../x", str(folder)):
        with pytest.raises(ModelNotFound, match="never by a path") as e:
            svc.resolve_adapter(requested, "toy")
        assert str(tmp_path) not in str(e.value)
    assert not svc.loaded


def test_registered_adapters_that_no_request_can_name_are_not_listed(tiny_service, tmp_path):
    """The app registers a session's own adapters as name@session: usable by that key, never listed."""
    folder = make_tiny_adapter(tiny_service.llm, tmp_path / "session" / "mine@abc123")
    assert tiny_service.register_adapter(folder) == "mine@abc123"
    assert "mine@abc123" not in tiny_service.available_adapters()
    assert tiny_service.resolve_adapter("mine@abc123", "toy") == "mine@abc123"  # the app's own lookup
    with pytest.raises(ModelNotFound, match="never by a path"):
        tiny_service.resolve_adapter("other@abc123", "toy")


# -- concurrent callers share one batched call (llm/coalesce.py) --
def ends_sentence(text: str) -> bool:  # a module-level predicate: equal in every call, so calls merge
    return "." in text


def count_generate_calls(service) -> list:
    """The rows of each decoder call (one call = one batched model run)."""
    calls = []
    inner = service.decoder.generate

    def counted(llm, rows, *args, **kwargs):
        calls.append(len(rows))
        return inner(llm, rows, *args, **kwargs)

    service.decoder.generate = counted
    return calls


def concurrently(service, jobs: list[dict]) -> list:
    """Each job (generate's keyword arguments) from its own thread, queued while the model is busy
    (the lock held here), then released together; returns each call's texts or exception."""
    out = [None] * len(jobs)

    def call(i, kw):
        try:
            out[i] = service.generate(**kw)
        except Exception as e:  # noqa: BLE001 - compared by the test
            out[i] = e

    queue_while_busy(service.lock, service.generations, [lambda i=i, kw=kw: call(i, kw) for i, kw in enumerate(jobs)])
    return out


def test_concurrent_generate_calls_share_one_model_call_and_get_their_own_texts(tiny_service):
    jobs = [dict(prompts=["Keywords: Comedy", "Summary"], max_new_tokens=6, stop_strings=["\n"],
                 stop_when=ends_sentence),
            dict(prompts=["A user watched these movies, oldest first"], max_new_tokens=6, stop_strings=["\n"],
                 stop_when=ends_sentence),
            dict(prompts=["Alpha Bravo Story (1980)", "Comedy, Drama", "Yes"], max_new_tokens=6,
                 stop_strings=["\n"], stop_when=ends_sentence)]
    alone = [tiny_service.generate(**kw) for kw in jobs]
    calls = count_generate_calls(tiny_service)
    together = concurrently(tiny_service, jobs)
    assert together == alone  # greedy: each caller's rows as if it ran alone
    assert calls == [6]  # three requests, one model call of all six prompts
    assert any(t for texts in together for t in texts)


def test_calls_with_other_stop_settings_share_one_batch_each_row_with_its_own_stops(tiny_service):
    """Issue 17: only the adapter must be equal; each row keeps its own budget, stop strings and predicate."""
    jobs = [dict(prompts=["Keywords: Comedy"], max_new_tokens=6),
            dict(prompts=["Summary"], max_new_tokens=4),  # another length
            dict(prompts=["Yes"], max_new_tokens=6, stop_strings=["\n"]),  # other stop strings
            dict(prompts=["Comedy"], max_new_tokens=6, stop_when=lambda t: len(t) > 3),  # a fresh lambda
            dict(prompts=["Drama"], max_new_tokens=6)]
    alone = [tiny_service.generate(**kw) for kw in jobs]
    calls = count_generate_calls(tiny_service)
    assert concurrently(tiny_service, jobs) == alone
    assert calls == [5]


def test_calls_with_another_adapter_are_not_merged(tiny_service, tmp_path):
    make_tiny_adapter(tiny_service.llm, tmp_path / "adapters" / "toy")
    jobs = [dict(prompts=["Keywords: Comedy"], max_new_tokens=5), dict(prompts=["Yes"], max_new_tokens=5, adapter="toy"),
            dict(prompts=["Drama"], max_new_tokens=5)]
    alone = [tiny_service.generate(**kw) for kw in jobs]
    calls = count_generate_calls(tiny_service)
    assert concurrently(tiny_service, jobs) == alone
    assert sorted(calls) == [1, 2]


def test_run_shares_one_call_between_generations_and_reports_each_row_as_it_finishes(tiny_service):
    from recdemo.llm.service import Generation

    tok = tiny_service.llm.tokenizer
    short = tiny_service.generation(["Keywords: Comedy", "Castle"], max_new_tokens=2)
    long = Generation([tok("A user watched these movies", add_special_tokens=False)["input_ids"]], 9,
                      stop_strings=("\n",))
    alone = [tiny_service.run([g])[0] for g in (short, long)]
    calls, seen = count_generate_calls(tiny_service), []
    texts = tiny_service.run([short, long], on_row=lambda g, i, text: seen.append((g, i, text)))
    assert texts == alone and calls == [3]
    assert sorted(seen) == [(0, 0, alone[0][0]), (0, 1, alone[0][1]), (1, 0, alone[1][0])]
    assert [g for g, _, _ in seen][-1] == 1 or len(alone[1][0]) <= 2  # the 2-token rows come first


def test_stream_yields_rows_as_they_finish_then_ends(tiny_service):
    short = tiny_service.generation(["Keywords: Comedy"], max_new_tokens=1)
    long = tiny_service.generation(["Castle", "Summary"], max_new_tokens=8)
    want = tiny_service.run([short, long])
    parts = list(tiny_service.stream([short, long]))
    assert len(parts) >= 2 and parts[0] == [(0, 0, want[0][0])]  # the 1-token row, before the others
    got = sorted(r for part in parts for r in part)
    assert got == sorted([(0, 0, want[0][0])] + [(1, i, t) for i, t in enumerate(want[1])])


def test_a_caller_holding_the_model_streams_the_same_rows_the_others_run_on_the_model_thread(tiny_service, monkeypatch):
    """A caller holding the service's lock (a fine-tune sharing the model) gets the rows of a
    streaming call, one per yield, in the order they finished; it runs the call itself (the model
    thread would wait for that lock forever). Every other caller's decoder calls run on the service's
    one model thread, never in the caller's (llm/coalesce.ModelThread)."""
    short = tiny_service.generation(["Keywords: Comedy"], max_new_tokens=1)
    long = tiny_service.generation(["Castle", "Summary"], max_new_tokens=8)
    live = list(tiny_service.stream([short, long]))
    threads = []
    inner = tiny_service.decoder.generate
    monkeypatch.setattr(tiny_service.decoder, "generate",
                        lambda *a, **kw: threads.append(threading.current_thread()) or inner(*a, **kw))
    with tiny_service.lock:
        quiet = list(tiny_service.stream([short, long]))
    assert all(len(part) == 1 for part in quiet) and quiet[0] == live[0]
    assert sorted(r for part in quiet for r in part) == sorted(r for part in live for r in part)
    assert threads == [threading.current_thread()]
    threads.clear()
    list(tiny_service.stream([short, long]))
    tiny_service.generate(["Castle"], max_new_tokens=2)
    assert len(threads) == 2 and len(set(threads)) == 1 and threads[0] is not threading.current_thread()
    assert threads[0].name == "model"


def test_model_thread_runs_calls_in_order_and_raises_their_errors():
    from recdemo.llm.coalesce import ModelThread

    runner = ModelThread()
    seen = []
    assert runner.call(lambda: seen.append(threading.current_thread()) or 7) == 7
    assert runner.call(lambda: runner.call(lambda: 3)) == 3  # a call from the thread itself runs at once
    with pytest.raises(ValueError, match="bad"):
        runner.call(lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert runner.call(lambda: threading.current_thread()) is seen[0] is not threading.current_thread()
    results = []
    callers = [threading.Thread(target=lambda i=i: results.append(runner.call(lambda: i * i))) for i in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert sorted(results) == [i * i for i in range(8)]


def test_stream_raises_the_calls_error_and_runs_at_once_under_the_lock(tiny_service, monkeypatch):
    gen = tiny_service.generation(["Castle", "Summary"], max_new_tokens=3)
    want = tiny_service.run([gen])
    with tiny_service.lock:  # a caller holding the model: no thread could lead, so it runs here
        assert sorted(r for part in tiny_service.stream([gen]) for r in part) == [(0, i, t) for i, t in enumerate(want[0])]

    def boom(*a, **kw):
        raise RuntimeError("model broke")

    monkeypatch.setattr(tiny_service.decoder, "generate", boom)
    with pytest.raises(RuntimeError, match="model broke"):
        list(tiny_service.stream([gen]))


def test_a_failing_call_fails_alone_and_the_rows_are_bounded(tiny_service):
    tiny_service.generations.max_rows = 3
    jobs = [dict(prompts=["Keywords: Comedy", "Summary"], max_new_tokens=5),
            dict(prompts=["Yes", "No"], max_new_tokens=5),  # 2 + 2 > 3: the next batch
            dict(prompts=["Comedy"], max_new_tokens=5),
            dict(prompts=["Drama", ""], max_new_tokens=5)]  # an empty prompt: this call fails inside the batch
    alone = [tiny_service.generate(**kw) for kw in jobs[:3]]
    calls = count_generate_calls(tiny_service)
    out = concurrently(tiny_service, jobs)
    assert out[:3] == alone
    assert isinstance(out[3], Exception)
    assert max(calls) <= 3 and sum(calls) >= 5


def test_a_coalesced_batch_reports_each_callers_rows_to_that_caller_only(tiny_service):
    gens = [[tiny_service.generation(["Keywords: Comedy", "Castle"], max_new_tokens=3)],
            [tiny_service.generation(["Summary"], max_new_tokens=5),
             tiny_service.generation(["A user watched these movies"], max_new_tokens=2, stop_strings=["\n"])]]
    alone = [tiny_service.run(g) for g in gens]
    calls = count_generate_calls(tiny_service)
    seen, got = [[], []], [None, None]

    def call(n):
        got[n] = tiny_service.run(gens[n], on_row=lambda g, i, text: seen[n].append((g, i, text)))

    queue_while_busy(tiny_service.lock, tiny_service.generations, [lambda n=n: call(n) for n in range(2)])
    assert calls == [4] and got == alone
    for n in range(2):
        assert sorted(seen[n]) == sorted((g, i, t) for g, texts in enumerate(alone[n]) for i, t in enumerate(texts))
