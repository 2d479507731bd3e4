"""Where chosen fusion weights live: per (dataset, model, adapter, ranker), tuned here in
``<fusion_cache_dir>/<dataset>-<hash>.json``, shipped in ``<fusion_dir>/<dataset>.json``; an adapter's
``meta.json`` may also carry ``"fusion": {ranker: w}`` (written by the fine-tune run). Lookup order:
the JSONs (if their dataset hash still matches), then the adapter meta, then 0 (SASRec's own order:
never worse than SASRec). The math of fusing and choosing a weight is in fusion.py.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from recdemo.storage import write_json_atomically


# -- storing the weight --
def weight_key(model: str, adapter: str | None, ranker: str) -> str:
    return f"{Path(str(model)).name}/{adapter or 'base'}/{ranker}"


class FusionStore:
    """Tuned weights per dataset: ``{"dataset", "dataset_hash", "weights": {key: entry}}``.

    ``<fusion_dir>/<dataset>.json`` holds the shipped ones (used only while their hash matches).
    With a ``cache_dir``, weights tuned here are written to ``<cache_dir>/<dataset>-<hash>.json``
    and read first, so tuning (``evaluate --split valid``) never rewrites a shipped file, and two
    datasets with one name never share weights; without one (tests, benches with a temp folder)
    they go to ``fusion_dir`` itself."""

    def __init__(self, fusion_dir: str | Path, cache_dir: str | Path | None = None):
        self.dir = Path(fusion_dir)
        self.cache = Path(cache_dir) if cache_dir else None

    def path(self, dataset_name: str, dataset_hash: str | None = None) -> Path:
        """Where ``save`` writes (the shipped file's path when there is no cache or no hash)."""
        if self.cache is None or dataset_hash is None:
            return self.dir / f"{dataset_name}.json"
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_name).strip("._") or "dataset"
        return self.cache / f"{safe}-{dataset_hash}.json"

    @staticmethod
    def _read(file: Path) -> dict:
        if not file.is_file():
            return {}
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            return {}  # a broken file is ignored (the default weight applies), never fatal
        return data if isinstance(data, dict) else {}

    def find(self, dataset_name: str, dataset_hash: str, key: str) -> tuple[dict, Path] | None:
        """(entry, the file it came from): the weights tuned here first, then the shipped ones."""
        for file in dict.fromkeys([self.path(dataset_name, dataset_hash), self.path(dataset_name)]):
            data = self._read(file)
            if data.get("dataset_hash") != dataset_hash:
                continue  # tuned on other data: stale
            entry = data.get("weights", {}).get(key)
            if isinstance(entry, dict) and isinstance(entry.get("weight"), (int, float)):
                return entry, file
        return None

    def get(self, dataset_name: str, dataset_hash: str, key: str) -> dict | None:
        found = self.find(dataset_name, dataset_hash, key)
        return found[0] if found else None

    def save(self, dataset_name: str, dataset_hash: str, key: str, weight: float, **details) -> Path:
        file = self.path(dataset_name, dataset_hash)
        data = self._read(file)
        if data.get("dataset_hash") != dataset_hash:
            data = {}
        data.update({"dataset": dataset_name, "dataset_hash": dataset_hash})
        data.setdefault("weights", {})[key] = {"weight": float(weight), "method": details.pop("method", "rank"),
                                               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **details}
        return write_json_atomically(file, data, sort_keys=True)  # never half a file


def lookup_weight(store: FusionStore, dataset, model: str, adapter: str | None, ranker: str,
                  adapter_meta: dict | None = None, default: float = 0.0) -> tuple[float, str, str]:
    """(weight, method, source) for this dataset/model/adapter/ranker."""
    found = store.find(dataset.name, dataset.content_hash, weight_key(model, adapter, ranker))
    if found is not None:
        entry, file = found
        return float(entry["weight"]), str(entry.get("method", "rank")), str(file)
    meta_w = ((adapter_meta or {}).get("fusion") or {}).get(ranker)
    if isinstance(meta_w, (int, float)) and 0.0 <= meta_w <= 1.0:
        return float(meta_w), "rank", f"adapter {adapter} meta.json"
    return float(default), "rank", "default"
