import numpy as np
import pytest

from recdemo.cli.evaluate import format_rerank_table
from recdemo.eval.rerank_eval import evaluate_rerank
from recdemo.llm.rankers import Ranker, get_ranker

from conftest import PopularityRetriever, fake_cli_stack, make_toy_dataset


class OracleRanker(Ranker):
    """Fake LLM ranker: knows each user's test item (scores it 1, everything else 0) or, with
    ``adversarial``, scores it lowest. No model involved."""
    name = "oracle"

    def __init__(self, dataset, targets, adversarial=False, tmp=None):
        self.dataset, self.catalog, self.targets, self.adversarial = dataset, dataset.catalog, targets, adversarial
        self.fuse, self.fusion_default, self.store = True, 0.0, None
        self.service = type("S", (), {"llm": type("L", (), {"describe": lambda self: "fake", "name": "fake"})()})()

    def score_list(self, req):
        out = self.candidate_list(req)
        target = self.targets[tuple(req.history)]
        out.llm = np.array([(-1.0 if self.adversarial else 1.0) * (i == target) for i in out.items], dtype=float)
        out.info = {"adapter": None}
        return out


@pytest.fixture
def data():
    ds = make_toy_dataset(n_items=40, n_users=30, seed=3)
    return ds, PopularityRetriever(ds)


def targets_of(ds, split):
    return {tuple(int(x) for x in c.history): c.target for c in ds.eval_cases(split)}


def baseline_ndcg(ds, retriever, split, k=10):
    vals = []
    for c in ds.eval_cases(split):
        top = [i for i, _ in retriever.top_k(list(c.history), 50)][:k]
        vals.append(1 / np.log2(top.index(c.target) + 2) if c.target in top else 0.0)
    return float(np.mean(vals))


def test_oracle_metrics_and_baseline_are_computed_honestly(data):
    ds, retriever = data
    m = evaluate_rerank(OracleRanker(ds, targets_of(ds, "test")), ds, retriever, weight=1.0, n_candidates=20)
    assert m["baseline_ndcg@10"] == pytest.approx(baseline_ndcg(ds, retriever, "test"))
    # the oracle puts every retrieved target first: NDCG = HR = fraction of targets retrieved
    assert m["ndcg@10"] == pytest.approx(m["candidate_recall"]) and m["hr@10"] == pytest.approx(m["ndcg@10"])
    assert m["candidate_recall"] < 1.0  # some targets are outside the 20 candidates: counted as misses
    assert m["valid_ratio"] == 1.0 and m["auc"] == 1.0
    assert m["users"] == len(ds.eval_cases("test"))
    assert "SASRec top-10" in format_rerank_table(m)
    lo, hi = m["lift_ci95"]  # the oracle's lift is large and certain, and the interval holds the point
    assert 1.0 < lo <= m["lift"] <= hi and "95% paired bootstrap" in format_rerank_table(m)
    assert m["ndcg@10_ci95"][0] < m["ndcg@10"] < m["ndcg@10_ci95"][1]


def test_validation_selects_zero_for_an_adversarial_llm(data):
    ds, retriever = data
    m = evaluate_rerank(OracleRanker(ds, targets_of(ds, "valid"), adversarial=True), ds, retriever,
                        split="valid", select=True)
    assert m["fusion_weight"] == 0.0
    assert m["ndcg@10"] == pytest.approx(m["baseline_ndcg@10"])
    assert m["lift_ci95"] == [1.0, 1.0]  # w = 0 is SASRec's list, user for user
    assert m["llm_only_ndcg@10"] < m["baseline_ndcg@10"]
    helpful = evaluate_rerank(OracleRanker(ds, targets_of(ds, "valid")), ds, retriever, split="valid", select=True)
    assert helpful["fusion_weight"] > 0 and helpful["ndcg@10"] >= helpful["baseline_ndcg@10"]


class ConfidentRanker(OracleRanker):
    """Knows the target for one user in three and says so by a wide score margin; for the others its
    scores are noise. Only the score's magnitude tells the two cases apart: rank normalisation
    cannot see it, z-scores can."""

    def score_list(self, req):
        out = self.candidate_list(req)
        target = self.targets[tuple(req.history)]
        rng = np.random.default_rng(len(req.history) * 7919 + target)
        sure = rng.random() < 1 / 3
        out.llm = np.array([100.0 * (i == target) if sure else rng.normal() for i in out.items])
        out.info = {"adapter": None}
        return out


def test_validation_picks_the_normalisation_that_scores_better(data):
    ds, retriever = data
    m = evaluate_rerank(ConfidentRanker(ds, targets_of(ds, "valid")), ds, retriever, split="valid", select=True)
    assert m["fusion_method"] == "zscore" and m["fusion_weight"] > 0
    best_rank = max(m["ndcg_by_weight_rank"].values())
    assert m["ndcg@10"] == pytest.approx(m["ndcg_by_weight_zscore"][str(m["fusion_weight"])])
    assert m["ndcg@10"] > best_rank
    again = evaluate_rerank(ConfidentRanker(ds, targets_of(ds, "valid")), ds, retriever, split="valid",
                            weight=m["fusion_weight"])  # weight given: rank unless a method is stored
    assert again["fusion_method"] == "rank"


@pytest.mark.parametrize("name", ["palr", "tallrec", "genrec"])
def test_real_rankers_on_the_tiny_model(name, data, tiny_llm, tmp_path):
    ds, retriever = data
    r = get_ranker(name, tiny_llm, ds, retriever, fusion_dir=str(tmp_path))
    m = evaluate_rerank(r, ds, retriever, split="valid", users=6, seed=0, n_candidates=15, k=5, select=True)
    assert m["valid_ratio"] == 1.0 and m["returned_per_user"] == 5
    assert m["ndcg@5"] >= m["baseline_ndcg@5"] - 1e-12  # chosen on these very users, 0 is in the grid
    assert set(m["ndcg_by_weight"]) == {str(w / 10) for w in range(11)}
    assert (m["auc"] is None) == (name == "genrec")
    assert m["latency_ms_p90"] >= m["latency_ms_p50"] > 0


def test_cli_selects_on_valid_then_applies_the_weight_on_test(data, tiny_llm, tmp_path, monkeypatch, capsys):
    import argparse
    import json

    from recdemo.cli.evaluate import cli_rerank

    ds, retriever = data
    cfg = fake_cli_stack(monkeypatch, tmp_path, ds, retriever, tiny_llm)
    args = dict(ranker="score", users=5, seed=0, no_fuse=False)
    assert cli_rerank(argparse.Namespace(split="valid", json=str(tmp_path / "v.json"), **args), cfg) == 0
    valid = json.loads((tmp_path / "v.json").read_text())
    for key in ("ndcg@10", "hr@10", "baseline_ndcg@10", "baseline_hr@10", "valid_ratio", "latency_ms_p50",
                "latency_ms_p90", "users", "auc"):
        assert key in valid
    tuned = tmp_path / "fusion-cache" / f"toy-{ds.content_hash}.json"  # never the shipped fusion folder
    assert valid["fusion_saved_to"] == str(tuned) and not (tmp_path / "fusion").exists()
    saved = json.loads(tuned.read_text())
    assert saved["weights"]["tiny-llama/base/score"]["weight"] == valid["fusion_weight"]
    assert saved["weights"]["tiny-llama/base/score"]["method"] == valid["fusion_method"]
    assert cli_rerank(argparse.Namespace(split="test", json=str(tmp_path / "t.json"), **args), cfg) == 0
    test = json.loads((tmp_path / "t.json").read_text())
    assert test["fusion_weight"] == valid["fusion_weight"] and test["fusion_source"] == str(tuned)
    assert test["fusion_method"] == valid["fusion_method"]
    assert "SASRec top-10" in capsys.readouterr().out
