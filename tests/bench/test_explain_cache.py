"""bench/explain_cache.py: a row counts as a hit exactly when an earlier row made the same prompt."""
from __future__ import annotations

from conftest import PopularityRetriever, load_bench

from recdemo.config import Config
from recdemo.pipeline.recommender import Recommender

explain_cache = load_bench("explain_cache")


def test_a_row_is_a_hit_when_an_earlier_request_made_its_prompt(toy_dataset, tiny_service, tmp_path):
    cfg = Config().set("llm", "adapter_dir", str(tmp_path / "adapters"))
    cfg = cfg.set("retrieval", "text_cache_dir", str(tmp_path / "text"))
    rec = Recommender(toy_dataset, cfg, service=tiny_service, retriever=PopularityRetriever(toy_dataset))
    rec.stack._text_index_failed = True  # no sentence encoder in unit tests
    cat = toy_dataset.catalog
    first, second = ([cat.titles[i] for i in toy_dataset.sequences[u][:5]] for u in range(2))
    before = tiny_service.decoder.stats.as_dict()["calls"]
    out = explain_cache.count_hits(rec, [first, second, first], "score", block=2)
    rows = len(explain_cache.planned_prompts(rec, first, "score"))
    assert rows > 0 and out["requests"] == 3 and out["rows"] == out["blocks"][0]["rows"] + rows
    assert out["blocks"][1] == {"requests": "3-4", "rows": rows, "hits": rows, "hit_share": 1.0}  # a repeat: all hits
    assert out["hits"] >= rows and out["distinct_prompts"] == out["rows"] - out["hits"]
    assert tiny_service.decoder.stats.as_dict()["calls"] == before  # nothing was generated
    assert "| all |" in explain_cache.table({**out, "dataset": "toy", "ranker": "score", "command": "x"})
