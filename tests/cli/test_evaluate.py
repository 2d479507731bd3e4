"""`python -m recdemo evaluate`: the retrieval table and JSON (masked, unmasked, sampled), the rerank stage's
weight selection on valid then test, and --batch-size giving the same metrics."""
import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from conftest import fake_cli_stack, real_data_root, without_latency
from recdemo.cli.evaluate import cli_evaluate, cli_rerank
from recdemo.config import PROJECT_ROOT, Config, RetrievalConfig

KEYS = ("hr@10", "ndcg@10", "hr@5", "ndcg@5", "hr@20", "ndcg@20", "mrr", "users")


def test_cli_writes_metrics_and_baselines(cycle_dataset, tmp_path, monkeypatch, capsys):
    import recdemo.llm.stack as stack_mod
    monkeypatch.setattr(stack_mod, "load_from_config", lambda cfg: cycle_dataset)
    cfg = Config()
    cfg.retrieval = RetrievalConfig(maxlen=12, hidden=16, dropout=0.0, epochs=8, lr=1e-2, batch_size=16,
                                    warmup_steps=5, checkpoint_dir=str(tmp_path),
                                    cache_dir=str(tmp_path / "cache"))
    out = tmp_path / "m.json"
    args = argparse.Namespace(stage="retrieval", split="test", protocol="full", seed=0, users=None, json=str(out))
    assert cli_evaluate(args, cfg) == 0
    data = json.loads(out.read_text())
    assert all(k in data for k in KEYS)
    assert set(data["baselines"]) == {"popularity", "item_knn"}
    assert all(k in data["baselines"]["item_knn"] for k in KEYS)
    assert data["users"] == len(cycle_dataset.sequences)
    assert data["ndcg@10"] > data["baselines"]["popularity"]["ndcg@10"]
    assert set(data["unmasked"]) == {"sasrec", "popularity", "item_knn"}
    assert data["unmasked"] == data["protocols"]["unmasked"]
    assert data["unmasked"]["popularity"]["ndcg@10"] <= data["baselines"]["popularity"]["ndcg@10"]
    printed = capsys.readouterr().out
    assert "SASRec" in printed and "item-kNN" in printed and "unmasked NDCG@10" in printed


@pytest.mark.integration
def test_evaluate_command_on_real_data(tmp_path):
    out = tmp_path / "retrieval.json"
    env = {**os.environ, "RECDEMO_DATA_DIR": real_data_root()}
    assert (PROJECT_ROOT / "checkpoints" / "sasrec-movielens-small.safetensors").is_file()
    proc = subprocess.run([sys.executable, "-m", "recdemo", "evaluate", "--dataset", "movielens-small",
                           "--users", "60", "--json", str(out)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert all(k in data for k in KEYS) and data["users"] == 60
    assert set(data["baselines"]) == {"popularity", "item_knn"}
    assert "sampled100" in data["protocols"]
    assert data["protocols"]["sampled100"]["sasrec"]["hr@10"] >= data["hr@10"]


def test_cli_selects_on_valid_then_applies_the_weight_on_test(toy_eval_data, tiny_llm, tmp_path, monkeypatch, capsys):
    import argparse
    import json

    ds, retriever = toy_eval_data
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


def test_cli_batch_size_gives_the_same_metrics(toy_eval_data, tiny_llm, tmp_path, monkeypatch, capsys):
    ds, retriever = toy_eval_data
    cfg = fake_cli_stack(monkeypatch, tmp_path, ds, retriever, tiny_llm)
    got = {}
    for ranker, batch in (("score", 1), ("score", 3), ("tallrec", 1), ("tallrec", 3)):
        path = tmp_path / f"{ranker}{batch}.json"
        args = argparse.Namespace(split="test", users=6, seed=0, no_fuse=True, batch_size=batch,
                                  profile="heuristic", json=str(path))
        assert cli_rerank(args, replace(cfg, llm=replace(cfg.llm, ranker=ranker))) == 0  # --ranker sets the config
        got[ranker, batch] = json.loads(path.read_text())
    assert without_latency(got["score", 3]) == {**without_latency(got["score", 1]), "batch_size": 3}
    assert without_latency(got["tallrec", 3]) == {**without_latency(got["tallrec", 1]), "batch_size": 3}
    assert "does not batch" not in capsys.readouterr().err
