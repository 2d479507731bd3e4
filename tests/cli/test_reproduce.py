"""`python -m recdemo reproduce`: flags derived from the config, checks before anything slow, and the
whole command on movielens-small with the embedded SmolLM2 (integration, tiny scale)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields, replace

import pytest

from conftest import real_data_root
from recdemo.cli import main as cli
from recdemo.config import PROJECT_ROOT, Config, FinetuneConfig, ReproduceConfig


def parse(*argv):
    args = cli.build_parser().parse_args(list(argv))
    return args, Config().apply_args(args)


def test_a_bare_command_runs_with_the_config_defaults():
    _, cfg = parse("reproduce")
    assert cfg == Config()


def test_flags_set_the_run_and_every_adapter():
    _, cfg = parse("reproduce", "--dataset", "amazon-beauty", "--model", "meta-llama/Llama-2-7b-hf", "--steps", "300",
                   "--users", "500", "--device", "cuda", "--dtype", "bfloat16", "--batch-size", "16",
                   "--micro-batch-size", "8", "--eval-batch-size", "16", "--eval-seed", "2", "--seed", "1",
                   "--papers", "palr-v1,tallrec", "--out", "runs/x", "--lora-targets", "all-linear")
    assert (cfg.data.dataset, cfg.llm.model, cfg.llm.device, cfg.llm.dtype) == (
        "amazon-beauty", "meta-llama/Llama-2-7b-hf", "cuda", "bfloat16")
    assert cfg.reproduce == ReproduceConfig(papers=["palr-v1", "tallrec"], users=500, eval_seed=2, eval_batch_size=16,
                                            out="runs/x")
    assert cfg.finetune == replace(FinetuneConfig(), steps=300, batch_size=16, micro_batch_size=8, seed=1,
                                   lora_targets="all-linear")
    assert parse("reproduce", "--llm", "some/model")[1].llm.model == "some/model"  # the usual name works too


def test_every_reproduce_setting_is_a_flag():
    sub = cli.build_parser()._subparsers._group_actions[0].choices["reproduce"]
    dests = {a.dest for a in sub._actions}
    assert {f"reproduce.{f.name}" for f in fields(ReproduceConfig)} <= dests
    per_adapter = {"finetune.tasks", "finetune.out", "finetune.init_adapter"}
    assert not per_adapter & dests  # the run names each adapter's task and folder itself


def test_an_unknown_paper_is_refused_before_anything_slow(capsys, monkeypatch):
    def slow(*args, **kwargs):
        raise AssertionError("loaded data before checking the flags")

    monkeypatch.setattr("recdemo.llm.stack.load_from_config", slow)
    assert cli.main(["reproduce", "--papers", "palr-v1,bert4rec"]) == 1
    err = capsys.readouterr().err
    assert "unknown paper(s) bert4rec" in err and "Traceback" not in err


@pytest.mark.integration
def test_reproduce_on_movielens_with_the_embedded_model(tmp_path):
    env = {**os.environ, "RECDEMO_DATA_DIR": real_data_root()}
    shipped = sorted(p.name for p in (PROJECT_ROOT / "checkpoints" / "adapters").iterdir())
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "recdemo", "reproduce", "--dataset", "movielens-small",
                           "--model", "smollm2-135m", "--steps", "1", "--users", "2", "--batch-size", "1",
                           "--eval-users", "0", "--no-rank-eval", "--eval-every", "0", "--candidates", "10",
                           "--out", str(out)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    table = json.loads((out / "results.json").read_text())
    assert [a["paper"] for a in table["adapters"]] == ["palr-v1", "palr-v2", "genrec", "tallrec"]
    assert len(table["rows"]) == 8 and all(r["metrics"]["users"] == 2 for r in table["rows"])
    assert table["model"] == "smollm2-135m" and table["dataset"] == "movielens-small"
    assert "| SASRec |" in proc.stdout and (out / "results.md").read_text().startswith("# Reproduced")
    assert sorted(p.name for p in (PROJECT_ROOT / "checkpoints" / "adapters").iterdir()) == shipped
