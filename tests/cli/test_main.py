"""The command line: flags derived from the config, every old flag name, request limits, errors."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

from recdemo.cli import main as cli
from recdemo.cli.finetune import spec_from_config
from recdemo.config import Config, FinetuneConfig, LimitsConfig
from recdemo.llm.rankers import RANKERS

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv, limits=None):
    args = cli.build_parser(limits).parse_args(list(argv))
    return args, Config().apply_args(args)


def test_finetune_defaults_are_the_config_defaults():
    """Nothing is written twice: a bare finetune command trains with FinetuneConfig's defaults."""
    _, cfg = parse("finetune", "--out", "checkpoints/adapters/x")
    assert cfg.finetune == replace(FinetuneConfig(), out="checkpoints/adapters/x")
    spec = spec_from_config(cfg.finetune)
    assert (spec.steps, spec.eval_users, spec.share_base) == (FinetuneConfig.steps, FinetuneConfig.eval_users, "share")


def subparser(command: str):
    return cli.build_parser()._subparsers._group_actions[0].choices[command]


def test_flag_help_shows_the_dataclass_default(monkeypatch):
    monkeypatch.setattr(FinetuneConfig.__dataclass_fields__["steps"], "default", 321)
    finetune = subparser("finetune")
    steps = next(a for a in finetune._actions if "--steps" in a.option_strings)
    assert "(default: 321)" in steps.help and steps.type is int and steps.dest == "finetune.steps"


def test_every_old_flag_name_still_works():
    _, cfg = parse("finetune", "--dataset", "amazon-beauty", "--llm", "m", "--device", "cpu", "--dtype", "float32",
                   "--adapter", "none", "--tasks", "genrec,tallrec", "--steps", "9", "--examples", "30",
                   "--batch-size", "3", "--lora-r", "4", "--lora-alpha", "16", "--lora-targets", "all-linear",
                   "--lr", "1e-3", "--max-length", "256", "--eval-every", "5", "--eval-users", "8",
                   "--seed", "3", "--out", "o", "--no-resume", "--init-adapter", "a", "--micro-batch-size", "2",
                   "--lora-dropout", "0.1", "--train-candidates", "10", "--eval-candidates", "30",
                   "--rank-sasrec-weight", "0.5", "--history-attributes", "--no-rank-eval",
                   "--grad-checkpointing", "--threads", "1")
    ft = cfg.finetune
    assert ft.tasks == ["genrec", "tallrec"] and (ft.steps, ft.examples, ft.batch_size) == (9, 30, 3)
    assert (ft.lora_r, ft.lora_alpha, ft.lora_targets, ft.lora_dropout) == (4, 16, "all-linear", 0.1)
    assert (ft.lr, ft.max_length, ft.eval_every, ft.eval_users, ft.seed) == (1e-3, 256, 5, 8, 3)
    assert (ft.out, ft.resume, ft.init_adapter, ft.micro_batch_size) == ("o", False, "a", 2)
    assert (ft.n_candidates, ft.eval_candidates, ft.rank_sasrec_weight) == (10, 30, 0.5)
    assert ft.with_attributes and not ft.rank_eval and ft.gradient_checkpointing
    assert (cfg.data.dataset, cfg.llm.model, cfg.llm.device, cfg.llm.dtype, cfg.llm.adapter) == \
        ("amazon-beauty", "m", "cpu", "float32", None)
    assert cfg.retrieval == Config().retrieval  # --lr/--seed/--batch-size here are the fine-tune's

    args, cfg = parse("recommend", "--history", "A", "B", "--ranker", "palr", "--candidates", "30", "--top", "5",
                      "--json", "--data-root", "/d", "--data-dir", "/x")
    assert args.history == ["A", "B"] and args.json
    assert (cfg.llm.ranker, cfg.retrieval.n_candidates, cfg.llm.n_results) == ("palr", 30, 5)
    assert (cfg.data.root, cfg.data.data_dir) == ("/d", "/x")

    args, cfg = parse("evaluate", "--stage", "rerank", "--protocol", "sampled100", "--split", "valid",
                      "--ranker", "genrec", "--users", "10", "--seed", "4", "--no-fuse", "--json", "m.json")
    assert (args.stage, args.protocol, args.split, args.users, args.seed, args.no_fuse, args.json) == \
        ("rerank", "sampled100", "valid", 10, 4, True, "m.json")
    assert cfg.llm.ranker == "genrec" and cfg.retrieval.seed is None

    _, cfg = parse("demo", "--host", "0.0.0.0", "--port", "8000", "--share")
    assert (cfg.app.host, cfg.app.port, cfg.app.share) == ("0.0.0.0", 8000, True)
    args, cfg = parse("data", "info", "--dataset", "ml-1m")
    assert getattr(args, "data.dataset") == "ml-1m" and args.name is None


def test_ranker_choices_are_the_registry():
    assert parse("recommend", "--history", "A", "--ranker", "tallrec")[1].llm.ranker == "tallrec"
    for command in ("recommend", "evaluate"):
        sub = subparser(command)
        ranker = next(a for a in sub._actions if "--ranker" in a.option_strings)
        assert list(ranker.choices) == list(RANKERS)
    with pytest.raises(SystemExit):
        parse("recommend", "--history", "A", "--ranker", "bm25")


def test_unknown_fine_tune_task_is_refused_before_anything_slow(capsys, monkeypatch):
    def slow(*args, **kwargs):
        raise AssertionError("loaded data before checking the flags")

    monkeypatch.setattr("recdemo.data.load_from_config", slow)
    assert cli.main(["finetune", "--out", "o", "--tasks", "recommend,bogus"]) == 1
    err = capsys.readouterr().err
    assert "unknown fine-tuning task(s) bogus" in err and "Traceback" not in err


@pytest.mark.parametrize("flag,limit,env", [("--top", "max_results", "RECDEMO_MAX_RESULTS"),
                                            ("--candidates", "max_candidates", "RECDEMO_MAX_CANDIDATES")])
def test_request_sizes_are_bounded_by_the_limits(flag, limit, env, capsys):
    limits = LimitsConfig()
    at = getattr(limits, limit)
    assert parse("recommend", "--history", "A", flag, str(at))[1] is not None  # at the limit: fine
    for bad in (str(at + 1), "100000", "0", "ten"):
        with pytest.raises(SystemExit):
            parse("recommend", "--history", "A", flag, bad)
    err = capsys.readouterr().err
    assert f"100000 {'results' if limit == 'max_results' else 'candidates'} is above this server's limit" in err
    assert env in err and "'ten' is not a whole number" in err
    raised = replace(limits, **{limit: 100_000})  # an operator who raised the limit (env var) gets it
    assert parse("recommend", "--history", "A", flag, "100000", limits=raised)[1] is not None


def test_main_reads_the_limits_and_the_debug_switch_from_the_env(monkeypatch, capsys):
    def boom(args, cfg):
        raise ValueError(f"boom with k={cfg.llm.n_results}")

    monkeypatch.setattr("recdemo.cli.recommend.cli_recommend", boom)
    monkeypatch.delenv("RECDEMO_DEBUG", raising=False)
    monkeypatch.setenv("RECDEMO_MAX_RESULTS", "500")
    assert cli.main(["recommend", "--history", "A", "--top", "400"]) == 1
    assert capsys.readouterr().err == "error: boom with k=400\n"  # one line, no traceback
    monkeypatch.setenv("RECDEMO_DEBUG", "1")
    with pytest.raises(ValueError, match="boom"):
        cli.main(["recommend", "--history", "A", "--top", "400"])


def test_every_documented_fine_tune_field_is_a_flag():
    sub = subparser("finetune")
    dests = {a.dest for a in sub._actions}
    documented = {f"finetune.{f.name}" for f in fields(FinetuneConfig) if "help" in f.metadata}
    assert documented <= dests and "finetune.share_base" not in dests


def test_help_is_fast_and_loads_no_torch():
    code = ("import sys; from recdemo.cli.main import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
