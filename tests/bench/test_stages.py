"""bench/stages.py --compare-lookup: each history runs with and without the decoder's drafts, the arm
that goes first alternating, and the answers of the two arms are compared."""
from __future__ import annotations

from conftest import PopularityRetriever, load_bench

from recdemo.config import Config
from recdemo.pipeline.recommender import Recommender

stages = load_bench("stages")


def test_compare_lookup_alternates_the_arms_and_compares_their_answers(toy_dataset, tiny_service, tmp_path):
    cfg = Config().set("llm", "adapter_dir", str(tmp_path / "adapters"))
    cfg = cfg.set("retrieval", "text_cache_dir", str(tmp_path / "text"))
    rec = Recommender(toy_dataset, cfg, service=tiny_service, retriever=PopularityRetriever(toy_dataset))
    rec.stack._text_index_failed = True  # no sentence encoder in unit tests
    rec.explainer.max_new_tokens = 12
    configured = tiny_service.decoder.lookup
    assert configured.tokens > 0  # drafts are on by default (LLMConfig.lookup_tokens)
    active, real = [], rec.recommend_stages

    def recording(*args, **kwargs):
        active.append(tiny_service.decoder.lookup.tokens)
        yield from real(*args, **kwargs)
    rec.recommend_stages = recording
    cat = toy_dataset.catalog
    hists = [[cat.titles[i] for i in toy_dataset.sequences[u][:5]] for u in range(3)]
    out = stages.compare_lookup(rec, hists, "score")
    on = configured.tokens
    assert active == [on, 0, 0, on, on, 0]  # drafts first, then plain first, then drafts first
    assert out["same_answers"] == 3 and out["same_sentences"] == out["sentences"] > 0  # the drafts change no sentence
    arms = out["arms"]
    assert arms["plain"]["decoder"]["drafted_tokens"] == 0 < arms["drafts"]["decoder"]["drafted_tokens"]
    assert arms["plain"]["decoder"]["new_tokens"] == arms["drafts"]["decoder"]["new_tokens"]
    assert all(len(arm["runs"]) == 3 and arm["runs"][0][-1][0] == "done" for arm in arms.values())
    assert tiny_service.decoder.lookup is configured  # restored
