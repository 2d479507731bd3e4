"""SASRec checkpoints: safetensors weights (float16) + a JSON file, named by dataset and keyed by its hash.

``checkpoints/sasrec-<dataset>.safetensors`` holds the weights, ``sasrec-<dataset>.json`` the
model config, the training config and report, and the ``dataset_hash`` the weights were trained
on. A checkpoint whose hash differs from the dataset's current ``content_hash`` is stale (the data
changed, item indices may mean other items) and is never used.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recdemo.retrieval.sasrec import SASRec, SASRecConfig

FORMAT = "recdemo-sasrec/1"


def checkpoint_paths(dataset_name: str, directory: str | Path) -> tuple[Path, Path]:
    """(weights, meta) paths for a dataset name; odd characters in the name become '_'."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_name).strip("._") or "dataset"
    base = Path(directory) / f"sasrec-{safe}"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def save_checkpoint(model: SASRec, cfg, dataset, directory: str | Path, report: dict | None = None) -> Path:
    """Write weights + JSON for ``dataset``; returns the weights path."""
    weights, meta_path = checkpoint_paths(dataset.name, directory)
    weights.parent.mkdir(parents=True, exist_ok=True)
    # float16 on disk halves the file (the shipped ones stay small enough to commit); scores move by
    # about 1e-3 relative. load_checkpoint returns float32 weights.
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    train_cfg = asdict(cfg) if is_dataclass(cfg) else dict(cfg or {})
    train_cfg.pop("checkpoint_dir", None)  # a local path, meaningless on another machine
    meta = {
        "format": FORMAT,
        "dataset": dataset.name,
        "dataset_hash": dataset.content_hash,
        "n_items": dataset.n_items,
        "model": model.cfg.to_dict(),
        "train": train_cfg,
        "report": report or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # Write to temporary names, then rename: a crash never leaves half a checkpoint behind.
    tmp_w, tmp_m = weights.with_suffix(".safetensors.tmp"), meta_path.with_suffix(".json.tmp")
    save_file(state, str(tmp_w), metadata={"format": FORMAT, "dataset_hash": dataset.content_hash})
    tmp_m.write_text(json.dumps(meta, indent=1))
    tmp_w.replace(weights)
    tmp_m.replace(meta_path)
    return weights


def read_meta(dataset_name: str, directory: str | Path) -> dict | None:
    """The checkpoint's JSON, or None when missing or unreadable."""
    _, meta_path = checkpoint_paths(dataset_name, directory)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def checkpoint_problem(dataset, directory: str | Path) -> str | None:
    """Why the checkpoint for ``dataset`` cannot be used (a sentence), or None when it can."""
    weights, meta_path = checkpoint_paths(dataset.name, directory)
    if not weights.is_file() or not meta_path.is_file():
        return f"no SASRec checkpoint for {dataset.name!r} in {Path(directory)}"
    meta = read_meta(dataset.name, directory)
    if meta is None or meta.get("format") != FORMAT:
        return f"{meta_path} is not a readable {FORMAT} checkpoint description"
    if meta.get("dataset_hash") != dataset.content_hash:
        return (f"the SASRec checkpoint {weights.name} was trained on other data "
                f"(hash {meta.get('dataset_hash')}, the dataset now hashes to {dataset.content_hash})")
    if meta.get("n_items") != dataset.n_items:
        return f"the SASRec checkpoint {weights.name} has {meta.get('n_items')} items, the dataset {dataset.n_items}"
    return None


def load_checkpoint(dataset, directory: str | Path) -> SASRec | None:
    """The trained model for ``dataset`` (eval mode), or None when missing, unreadable or stale."""
    if checkpoint_problem(dataset, directory) is not None:
        return None
    weights, _ = checkpoint_paths(dataset.name, directory)
    meta = read_meta(dataset.name, directory)
    try:
        model = SASRec(SASRecConfig(**meta["model"]))
        model.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()}, strict=True)
    except (SafetensorError, OSError, TypeError, KeyError, RuntimeError):
        return None  # corrupt or from an incompatible version: treat like a missing checkpoint
    model.meta = meta
    return model.eval()
