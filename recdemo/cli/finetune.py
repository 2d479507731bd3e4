"""`python -m recdemo finetune ...` (and `accelerate launch -m recdemo finetune ...`)."""
from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch

from recdemo.config import FinetuneConfig
from recdemo.data import load_from_config
from recdemo.finetune.loop import FineTuneSpec, run_finetune
from recdemo.llm.stack import Stack, load_training_llm


def spec_from_config(cfg: FinetuneConfig):
    """The run's spec: the config's fine-tune settings (CLI flags already applied), checked. The CLI
    owns its model, so training needs no copy of it: the LoRA goes on the model itself."""
    return FineTuneSpec(**{**asdict(cfg), "share_base": "share"})


def load_retriever(dataset, cfg):
    """SASRec for hard negatives and evaluation candidates; None (with a note) when it has no
    checkpoint yet: fine-tuning does not silently spend many minutes training SASRec first."""
    def note(reason: str) -> None:
        print(f"note: no SASRec retriever ({reason}).\n      Training goes on with negatives that share "
              "attributes (or popular items), and validation ranks sampled candidate lists; train "
              f"SASRec first (`python -m recdemo train --dataset {dataset.name}`) for its hard negatives "
              "and real top-50 lists.")
    stack = Stack(cfg, dataset=dataset, train_retriever=False, retriever_text_fallback=False)
    return stack.optional_retriever(note)


def cli_finetune(args, cfg) -> int:
    spec = spec_from_config(cfg.finetune)  # checks the settings before anything slow
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if not Path(spec.out).name or Path(spec.out).name.endswith(".partial"):
        raise ValueError(f"--out {spec.out!r} must name an adapter folder, e.g. checkpoints/adapters/NAME")
    dataset = load_from_config(cfg.data)
    retriever = load_retriever(dataset, cfg)
    llm = load_training_llm(cfg.llm)  # placed for this process (several under `accelerate launch`)
    service = SimpleNamespace(llm=llm, lock=threading.RLock())  # the CLI owns its model: no copy, no app
    print(f"fine-tuning {llm.describe()} on {dataset.name} ({dataset.content_hash}): tasks "
          f"{','.join(spec.tasks)}, {spec.steps} steps x {spec.batch_size} examples, LoRA r={spec.lora_r} "
          f"on {spec.lora_targets} -> {spec.out}")
    result = run_finetune(spec, dataset, service, retriever)
    if result["status"] != "done":
        print(result.get("reason", result["status"]))
        return 1
    before, after = result["metrics_before"] or {}, result["metrics_after"] or {}
    print(f"{'metric':<32}{'before':>10}{'after':>10}")
    for key in after:
        if isinstance(after.get(key), float):
            b = before.get(key)
            print(f"{key:<32}{(f'{b:.4f}' if isinstance(b, float) else '-'):>10}{after[key]:>10.4f}")
    print(json.dumps({k: result[k] for k in ("adapter", "path", "steps", "examples", "examples_dropped",
                                             "seconds", "tokens_per_s")}))
    return 0
