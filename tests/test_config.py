"""Config: env vars, CLI overlay, the request limits' check, and no secret in a repr."""
from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from recdemo.config import ENV_VARS, Config, FinetuneConfig, LimitsConfig, flag_name


def test_hf_token_never_appears_in_a_repr():
    cfg = Config.from_env({"HF_TOKEN": "hf_secretvalue123", "RECDEMO_LLM": "some/model"})
    assert cfg.llm.hf_token == "hf_secretvalue123"  # read, and used by models.load_llm ...
    for text in (repr(cfg), str(cfg), repr(cfg.llm), f"{cfg}"):
        assert "hf_secretvalue123" not in text  # ... but never logged
        assert "some/model" in text  # the rest of the config still is


def test_env_vars_set_typed_fields():
    cfg = Config.from_env({"RECDEMO_PORT": "8000", "RECDEMO_MAX_RESULTS": "7", "RECDEMO_DEBUG": "1",
                           "RECDEMO_LOG": "DEBUG", "RECDEMO_ADAPTER": "none", "RECDEMO_DATA_DIR": "/d"})
    assert (cfg.app.port, cfg.limits.max_results, cfg.log.debug, cfg.log.level) == (8000, 7, True, "DEBUG")
    assert cfg.llm.adapter is None and cfg.data.root == "/d"
    assert Config.from_env({"RECDEMO_DEBUG": "0"}).log.debug is False
    assert Config.from_env({}) == Config()


def test_every_env_var_names_a_real_field():
    cfg = Config()
    for var, (section, name) in ENV_VARS.items():
        assert name in {f.name for f in fields(getattr(cfg, section))}, var


def test_apply_args_overlays_only_the_flags_given():
    args = argparse.Namespace(**{"finetune.steps": 7, "finetune.tasks": "genrec, tallrec", "llm.ranker": None,
                                 "retrieval.exclude_seen": False, "json": True})
    cfg = Config().apply_args(args)
    assert cfg.finetune.steps == 7 and cfg.finetune.tasks == ["genrec", "tallrec"]
    assert cfg.retrieval.exclude_seen is False  # False is a value, None is absent
    assert cfg.llm.ranker == Config().llm.ranker
    assert cfg.finetune.lr == FinetuneConfig().lr


def test_fine_tune_flags_keep_their_names():
    """README and docs use these; the flags are now derived from FinetuneConfig's fields."""
    names = {flag_name(f) for f in fields(FinetuneConfig) if "help" in f.metadata}
    assert {"--tasks", "--steps", "--batch-size", "--lora-r", "--eval-users", "--train-candidates",
            "--history-attributes", "--grad-checkpointing", "--resume", "--rank-eval", "--out"} <= names
    assert all(f.metadata["help"] for f in fields(FinetuneConfig) if "help" in f.metadata)


@pytest.mark.parametrize("name,what", [("max_results", "results"), ("max_candidates", "candidates"),
                                       ("max_history", "history items")])
def test_limits_check(name, what):
    limits = LimitsConfig()
    limit = getattr(limits, name)
    assert limits.check(name, limit, what) == limit  # at the limit: fine
    assert limits.check(name, 1, what) == 1
    with pytest.raises(ValueError) as e:
        limits.check(name, limit + 1, what)
    env = {v for v, f in ENV_VARS.items() if f == ("limits", name)}.pop()
    assert str(e.value) == (f"{limit + 1} {what} is above this server's limit of {limit} "
                            f"(limits.{name}; set {env} to change it).")
    with pytest.raises(ValueError, match=f"number of {what} must be at least 1, got 0"):
        limits.check(name, 0, what)
    assert limits.check(name, 0, what, minimum=0) == 0


def test_openmp_defaults_are_set_before_torch_and_never_over_a_users_choice():
    import os
    import subprocess
    import sys

    from recdemo.config import OPENMP_DEFAULTS, set_openmp_defaults

    env = {}
    assert set_openmp_defaults(env) == OPENMP_DEFAULTS and env == OPENMP_DEFAULTS
    mine = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert set_openmp_defaults(mine) == {} and mine == {"OMP_WAIT_POLICY": "PASSIVE"}
    # importing the package sets them in a fresh process, before anything can load torch
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_DEFAULTS}
    out = subprocess.run([sys.executable, "-c", "import recdemo, os, sys; "
                          "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"],
                         env=clean, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ACTIVE", "False"]
