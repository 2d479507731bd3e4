"""bench/stages.py --compare: each history runs under both arms of a setting (the decoder's drafts, the
explanation prompt's evidence lines), the arm that goes first alternating, and the answers of the two
arms are compared."""
from __future__ import annotations

from conftest import PopularityRetriever, load_bench

from recdemo.config import Config
from recdemo.pipeline.recommender import Recommender

stages = load_bench("stages")


def recommender(toy_dataset, tiny_service, tmp_path) -> Recommender:
    cfg = Config().set("llm", "adapter_dir", str(tmp_path / "adapters"))
    cfg = cfg.set("retrieval", "text_cache_dir", str(tmp_path / "text"))
    rec = Recommender(toy_dataset, cfg, service=tiny_service, retriever=PopularityRetriever(toy_dataset))
    rec.stack._text_index_failed = True  # no sentence encoder in unit tests
    rec.explainer.max_new_tokens = 12
    return rec


def toy_histories(toy_dataset, users: int = 3) -> list[list[str]]:
    cat = toy_dataset.catalog
    return [[cat.titles[i] for i in toy_dataset.sequences[u][:5]] for u in range(users)]


def test_compare_lookup_alternates_the_arms_and_compares_their_answers(toy_dataset, tiny_service, tmp_path):
    rec = recommender(toy_dataset, tiny_service, tmp_path)
    configured = tiny_service.decoder.lookup
    assert configured.tokens > 0  # drafts are on by default (LLMConfig.lookup_tokens)
    active, real = [], rec.recommend_stages

    def recording(*args, **kwargs):
        active.append(tiny_service.decoder.lookup.tokens)
        yield from real(*args, **kwargs)
    rec.recommend_stages = recording
    out = stages.compare(rec, toy_histories(toy_dataset), "score", stages.lookup_arms(rec))
    on = configured.tokens
    assert active == [on, 0, 0, on, on, 0]  # drafts first, then plain first, then drafts first
    assert out["same_answers"] == 3 and out["same_sentences"] == out["sentences"] > 0  # the drafts change no sentence
    arms = out["arms"]
    assert arms["plain"]["decoder"]["drafted_tokens"] == 0 < arms["drafts"]["decoder"]["drafted_tokens"]
    assert arms["plain"]["decoder"]["new_tokens"] == arms["drafts"]["decoder"]["new_tokens"]
    assert all(len(arm["runs"]) == 3 and arm["runs"][0][-1][0] == "done" for arm in arms.values())
    assert tiny_service.decoder.lookup is configured  # restored


def test_compare_facts_prefills_fewer_tokens_with_fewer_evidence_lines(toy_dataset, tiny_service, tmp_path):
    rec = recommender(toy_dataset, tiny_service, tmp_path)
    assert rec.explainer.facts == Config().llm.explain_facts == 1
    seen, real = [], rec.explainer.prompt

    def recording(item, evidence):
        seen.append(rec.explainer.facts)
        return real(item, evidence)
    rec.explainer.prompt = recording
    out = stages.compare(rec, toy_histories(toy_dataset, 2), "score", stages.facts_arms(rec))
    assert list(out["arms"]) == ["facts=1", "facts=2"]
    assert set(seen) == {1, 2} and rec.explainer.facts == 1  # both ran; the configured one is back
    one, two = (out["arms"][a]["decoder"] for a in ("facts=1", "facts=2"))
    assert one["rows"] == two["rows"] > 0 and one["prompt_tokens"] < two["prompt_tokens"]


def test_compare_lookup_flag_is_compare_lookup():
    assert stages.parse(["--compare-lookup"]).compare == "lookup"
    assert stages.parse(["--compare", "facts"]).compare == "facts" and stages.parse([]).compare is None
