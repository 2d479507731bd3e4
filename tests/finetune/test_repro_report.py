"""The commands `reproduce` writes next to its numbers parse back to the very settings of the run."""
from __future__ import annotations

import shlex
from dataclasses import replace

from recdemo.cli import main as cli
from recdemo.config import Config
from recdemo.finetune.repro_report import evaluate_command, finetune_command, markdown, reproduce_command


def run_config() -> Config:
    cfg = Config()
    return replace(cfg,
                   data=replace(cfg.data, dataset="amazon-beauty", root="/data root"),
                   llm=replace(cfg.llm, model="meta-llama/Llama-2-7b-hf", device="cuda", dtype="bfloat16"),
                   retrieval=replace(cfg.retrieval, n_candidates=20),
                   finetune=replace(cfg.finetune, steps=7, lora_targets="all-linear", rank_eval=False,
                                    with_attributes=True, gradient_checkpointing=True, lr=1e-3, micro_batch_size=8),
                   reproduce=replace(cfg.reproduce, users=30, papers=["tallrec", "genrec"], eval_seed=3,
                                     eval_batch_size=4))


def parsed(command: str):
    words = shlex.split(command)
    env = {}
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[:3] == ["python", "-m", "recdemo"]
    args = cli.build_parser().parse_args(words[3:])
    return args, Config().apply_args(args), env


def test_the_reproduce_command_parses_back_to_the_run_settings():
    cfg = run_config()
    args, got, _ = parsed(reproduce_command(cfg, "runs/my run"))
    assert args.command == "reproduce"
    assert got.finetune == cfg.finetune and got.reproduce == replace(cfg.reproduce, out="runs/my run")
    assert (got.data, got.llm, got.retrieval) == (cfg.data, cfg.llm, cfg.retrieval)


def test_the_finetune_command_trains_what_the_run_trained():
    cfg = run_config()
    args, got, _ = parsed(finetune_command(cfg, "tallrec", "runs/x/adapters/repro-amazon-beauty-tallrec"))
    assert args.command == "finetune"
    assert got.finetune == replace(cfg.finetune, tasks=["tallrec"], out="runs/x/adapters/repro-amazon-beauty-tallrec")
    assert (got.data, got.llm.model, got.llm.dtype) == (cfg.data, cfg.llm.model, cfg.llm.dtype)


def test_the_evaluate_command_scores_the_same_users_and_adapter():
    cfg = run_config()
    args, got, env = parsed(evaluate_command(cfg, "tallrec", "repro-amazon-beauty-tallrec", "/runs/x/adapters"))
    assert (args.command, args.stage, args.split, args.no_fuse) == ("evaluate", "rerank", "test", True)
    assert (args.users, args.seed, args.batch_size) == (30, 3, 4)
    assert (got.llm.ranker, got.llm.adapter, got.retrieval.n_candidates, got.llm.n_results) == (
        "tallrec", "repro-amazon-beauty-tallrec", 20, 10)
    assert env == {"RECDEMO_ADAPTER_DIR": "/runs/x/adapters"}
    args, got, env = parsed(evaluate_command(cfg, "genrec", None, "/runs/x/adapters"))
    assert got.llm.adapter is None and env == {}  # --adapter none: the bare base model


def test_the_markdown_shows_every_row_with_its_protocol():
    row = {"label": "SASRec", "ranker": None, "adapter": None, "protocol": "p-sasrec",
           "metrics": {"hr@5": 0.5, "ndcg@5": 0.25, "hr@10": 0.75, "ndcg@10": 0.3, "mrr": 0.2, "users": 4}}
    llm_row = {**row, "label": "tallrec + tallrec adapter", "ranker": "tallrec", "adapter": "repro-x",
               "protocol": "p-llm"}
    table = {"k": 10, "adapters": [{"paper": "tallrec"}], "dataset": "d", "dataset_hash": "h", "model": "m",
             "device": "cpu", "dtype": "float32", "steps": 1, "finetune_seed": 0, "users": 4, "eval_seed": 0,
             "protocol": "the protocol", "rows": [row, llm_row], "wall_seconds": 2.0,
             "stages": [{"stage": "fine-tune tallrec", "seconds": 1.0, "reused": True}],
             "commands": {"reproduce": "python -m recdemo reproduce", "finetune": {"tallrec": "ft"},
                          "evaluate": {"tallrec-tallrec": "ev"}}}
    md = markdown(table)
    assert "| SASRec | - | none | 0.5000 | 0.2500 | 0.7500 | 0.3000 | 0.2000 | 4 | p-sasrec |" in md
    assert "| tallrec + tallrec adapter | tallrec | repro-x |" in md and md.count("p-llm") == 1
    assert "reused from an earlier run" in md and "\nft\n" in md and "\nev\n" in md
