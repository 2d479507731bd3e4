"""SASRec checkpoints: safetensors weights (float16) + a JSON file that names them, keyed by the data.

A checkpoint is ``<dir>/sasrec-<key>.json`` (the model config, the training config and report, the
``dataset_hash`` the weights were trained on) and the weights file that JSON names in ``"weights"``:
``sasrec-<key>.<sha256 of the weights>.safetensors``. The weights are written first under their
content name, then the JSON replaces the old one in one rename: that rename is the only moment the
checkpoint changes, so a crash at any point leaves the old pair or the new pair, never a mix.
(The shipped checkpoints predate this: their JSON has no ``"weights"`` and their weights are
``sasrec-<key>.safetensors``; they are read as they are.)

Where checkpoints live (``locate``): the shipped ones, ``checkpoint_dir/sasrec-<dataset name>``, are
used only when their ``dataset_hash`` is the dataset's ``content_hash``; every other dataset (uploads,
``--data-dir`` folders, a changed built-in) gets ``cache_dir/sasrec-<name>-<content hash>``, so two
folders with the same name never share or overwrite a checkpoint, and nothing but
``python -m recdemo train`` of a built-in dataset writes under ``checkpoint_dir``.
A checkpoint whose hash differs from the dataset's is stale (item indices may mean other items) and
is never used.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from recdemo.config import RetrievalConfig
from recdemo.retrieval.sasrec import SASRec, SASRecConfig
from recdemo.storage import write_file_atomically, write_json_atomically

FORMAT = "recdemo-sasrec/1"


def safe_key(name: str) -> str:
    """A file-name-safe key for a dataset name; odd characters become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset"


def cache_key(dataset) -> str:
    """The key of ``dataset``'s checkpoint in the cache: its name and content hash."""
    return f"{safe_key(dataset.name)}-{dataset.content_hash}"


def meta_path(key: str, directory: str | Path) -> Path:
    return Path(directory) / f"sasrec-{safe_key(key)}.json"


def checkpoint_paths(key: str, directory: str | Path) -> tuple[Path, Path]:
    """(weights, meta) paths of the checkpoint ``key`` in ``directory``: the weights file its JSON
    names, or the legacy ``sasrec-<key>.safetensors`` when the JSON names none (or is missing)."""
    meta_file = meta_path(key, directory)
    named = (read_meta(key, directory) or {}).get("weights")
    if isinstance(named, str) and named == Path(named).name and named.endswith(".safetensors"):
        return meta_file.with_name(named), meta_file
    return meta_file.with_suffix(".safetensors"), meta_file


def locate(dataset, cfg: RetrievalConfig) -> tuple[Path, str]:
    """(directory, key) of the checkpoint to use for ``dataset``: the shipped one when it was
    trained on exactly this data, else the dataset's place in the cache (which may not exist yet)."""
    if checkpoint_problem(dataset, cfg.checkpoint_dir, dataset.name) is None:
        return Path(cfg.checkpoint_dir), dataset.name
    return Path(cfg.cache_dir), cache_key(dataset)


def save_checkpoint(model: SASRec, cfg, dataset, directory: str | Path, report: dict | None = None,
                    key: str | None = None) -> Path:
    """Write weights + JSON for ``dataset`` as checkpoint ``key`` (default: the dataset's name) in
    ``directory``; returns the JSON's path. The previous pair stays usable until the JSON's rename."""
    key = dataset.name if key is None else key
    old_weights, meta_file = checkpoint_paths(key, directory)
    # float16 on disk halves the file (the shipped ones stay small enough to commit); scores move by
    # about 1e-3 relative. load_checkpoint returns float32 weights.
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": FORMAT, "dataset_hash": dataset.content_hash})
    digest = hashlib.sha256(blob).hexdigest()
    weights = meta_file.with_name(f"{meta_file.stem}.{digest[:16]}.safetensors")
    write_file_atomically(weights, lambda tmp: tmp.write_bytes(blob))
    train_cfg = asdict(cfg) if is_dataclass(cfg) else dict(cfg or {})
    for local in ("checkpoint_dir", "cache_dir", "text_cache_dir"):  # paths meaningless on another machine
        train_cfg.pop(local, None)
    meta = {
        "format": FORMAT,
        "dataset": dataset.name,
        "dataset_hash": dataset.content_hash,
        "n_items": dataset.n_items,
        "weights": weights.name,
        "weights_sha256": digest,
        "model": model.cfg.to_dict(),
        "train": train_cfg,
        "report": report or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomically(meta_file, meta)
    if old_weights != weights:  # only the file the replaced JSON named: a concurrent writer's stays
        old_weights.unlink(missing_ok=True)
    return meta_file


def read_meta(key: str, directory: str | Path) -> dict | None:
    """The checkpoint's JSON, or None when missing or unreadable."""
    try:
        meta = json.loads(meta_path(key, directory).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def checkpoint_problem(dataset, directory: str | Path, key: str | None = None) -> str | None:
    """Why checkpoint ``key`` (default: the dataset's name) in ``directory`` cannot be used for
    ``dataset`` (a sentence), or None when it can."""
    key = dataset.name if key is None else key
    weights, meta_file = checkpoint_paths(key, directory)
    if not weights.is_file() or not meta_file.is_file():
        return f"no SASRec checkpoint for {dataset.name!r} in {Path(directory)}"
    meta = read_meta(key, directory)
    if meta is None or meta.get("format") != FORMAT:
        return f"{meta_file} is not a readable {FORMAT} checkpoint description"
    if meta.get("dataset_hash") != dataset.content_hash:
        return (f"the SASRec checkpoint {meta_file.name} was trained on other data "
                f"(hash {meta.get('dataset_hash')}, the dataset now hashes to {dataset.content_hash})")
    if meta.get("n_items") != dataset.n_items:
        return f"the SASRec checkpoint {meta_file.name} has {meta.get('n_items')} items, the dataset {dataset.n_items}"
    return None


def load_checkpoint(dataset, directory: str | Path, key: str | None = None) -> SASRec | None:
    """The trained model for ``dataset`` (eval mode), or None when missing, unreadable or stale."""
    if checkpoint_problem(dataset, directory, key) is not None:
        return None
    key = dataset.name if key is None else key
    weights, _ = checkpoint_paths(key, directory)
    meta = read_meta(key, directory)
    try:
        blob = weights.read_bytes()
        if meta.get("weights_sha256") not in (None, hashlib.sha256(blob).hexdigest()):
            return None  # damaged on disk: treat like a missing checkpoint
        model = SASRec(SASRecConfig(**meta["model"]))
        model.load_state_dict({k: v.float() for k, v in load(blob).items()}, strict=True)
    except (SafetensorError, OSError, TypeError, KeyError, RuntimeError):
        return None  # corrupt or from an incompatible version: treat like a missing checkpoint
    model.meta = meta
    return model.eval()

