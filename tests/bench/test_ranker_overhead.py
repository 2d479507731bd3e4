"""bench/ranker_overhead.py in its --tiny mode (tiny tokenizer, no baseline): the counts it reports
are what the rankers do, and the score ranker reads its trie with one host transfer per call."""
import json
import sys

from conftest import load_bench, make_tiny_tokenizer


def test_tiny_run_counts_forwards_syncs_and_tokenizer_calls(tmp_path, monkeypatch):
    tokenizer = tmp_path / "tokenizer"
    make_tiny_tokenizer().save_pretrained(str(tokenizer))
    bench = load_bench("ranker_overhead")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the bench puts its folders first
    monkeypatch.setattr(sys, "argv", ["ranker_overhead.py", "--tiny", "--users", "2", "--items", "120",
                                      "--tokenizer", str(tokenizer), "--out", str(tmp_path / "out")])
    bench.main()
    report = json.loads((tmp_path / "out" / "ranker_overhead-tiny.json").read_text())
    score, palr = report["after"]["score"], report["after"]["palr"]
    assert score["calls"] == palr["calls"] == 2
    assert score["forwards"] == 2  # the prompt, then every candidate's branching tokens in one call
    assert score["syncs"] == 1  # every branching point read at once, one transfer
    assert palr["forwards"] > 2 and palr["syncs"] >= 1  # greedy: one call and one read per choice
    assert score["cpu_ms"] > 0
    assert "| score | syncs per call | 1.0 |" in (tmp_path / "out" / "ranker_overhead-tiny.md").read_text()


def test_counters_restore_what_they_wrap(tiny_llm):
    import torch

    bench = load_bench("ranker_overhead")
    before = torch.Tensor.tolist, type(tiny_llm.tokenizer).__call__
    counters = bench.Counters(tiny_llm.model, tiny_llm.tokenizer)
    counters.active = True
    torch.ones(2).tolist()
    tiny_llm.tokenizer("a")
    counters.close()
    torch.ones(2).tolist()
    assert counters.counts["syncs"] >= 1 and counters.counts["tokenizer_calls"] == 1
    assert (torch.Tensor.tolist, type(tiny_llm.tokenizer).__call__) == before
