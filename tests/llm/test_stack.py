"""The stack builder: each part built once (also under concurrent first use), explicit choices honoured."""
import threading
import time

import pytest

import recdemo.llm.stack as stack_mod
from recdemo.config import Config
from recdemo.errors import ModelNotFound
from recdemo.llm.stack import Stack

from conftest import PopularityRetriever


@pytest.fixture
def counted(monkeypatch, toy_dataset):
    """Retriever.for_dataset / TextIndex.for_dataset replaced by slow counting fakes."""
    calls = {"retriever": [], "text": 0}

    def retriever(cls, dataset, cfg, train_if_missing=True, text_index=None, **kw):
        time.sleep(0.05)  # long enough for concurrent first callers to overlap
        calls["retriever"].append({"train_if_missing": train_if_missing, "text_index": text_index})
        return PopularityRetriever(dataset)

    def text(cls, dataset, cfg, **kw):
        calls["text"] += 1
        return "text-index"
    monkeypatch.setattr(stack_mod.Retriever, "for_dataset", classmethod(retriever))
    monkeypatch.setattr(stack_mod.TextIndex, "for_dataset", classmethod(text))
    return calls


def test_parts_are_built_once_under_concurrent_first_use(counted, toy_dataset, tiny_llm):
    stack = Stack(Config(), dataset=toy_dataset, service=tiny_llm)
    got = []
    threads = [threading.Thread(target=lambda: got.append(stack.retriever)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(counted["retriever"]) == 1 and all(r is got[0] for r in got)
    assert counted["retriever"][0] == {"train_if_missing": True, "text_index": "text-index"}  # the app's default
    assert stack.ranker("score") is stack.ranker("score")
    assert stack.ranker("score").retriever is got[0]


def test_evaluation_stack_skips_the_text_index_and_never_trains(counted, toy_dataset):
    stack = Stack(Config(), dataset=toy_dataset, retriever_text_fallback=False, train_retriever=False)
    stack.retriever
    assert counted["text"] == 0
    assert counted["retriever"] == [{"train_if_missing": False, "text_index": None}]


def test_ranker_uses_the_built_retriever_or_the_one_given(counted, toy_dataset, tiny_llm):
    stack = Stack(Config(), dataset=toy_dataset, service=tiny_llm)
    assert stack.ranker("palr").retriever is None  # the pipeline: retrieval has not run (or failed)
    assert counted["retriever"] == []
    pinned = PopularityRetriever(toy_dataset)
    r = stack.ranker("palr", retriever=pinned, fuse=False)
    assert r.retriever is pinned and r.fuse is False and r is not stack.ranker("palr")


def test_optional_retriever_says_why_it_has_none(monkeypatch, toy_dataset):
    def missing(cls, *a, **k):
        raise ModelNotFound("no checkpoint for toy")
    monkeypatch.setattr(stack_mod.Retriever, "for_dataset", classmethod(missing))
    notes = []
    assert Stack(Config(), dataset=toy_dataset, train_retriever=False).optional_retriever(notes.append) is None
    assert notes == ["no checkpoint for toy"]


def test_from_config_overrides_the_dataset(monkeypatch, toy_dataset):
    seen = []
    monkeypatch.setattr(stack_mod, "load_from_config", lambda data: seen.append(data) or toy_dataset)
    stack = Stack.from_config(Config(), dataset_name="amazon-beauty", data_dir="/somewhere")
    assert seen == []  # nothing loads before it is needed
    assert stack.dataset is toy_dataset and stack.dataset is toy_dataset and len(seen) == 1
    assert (seen[0].dataset, seen[0].data_dir) == ("amazon-beauty", "/somewhere")
    assert stack.cfg.data.dataset == "amazon-beauty"
