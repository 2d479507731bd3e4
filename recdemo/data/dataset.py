"""A dataset: catalog + per-user item sequences in time order, with the leave-one-out split."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recdemo.data.catalog import Catalog
from recdemo.errors import DataError
from recdemo.data.formats import RawData, read_layout
from recdemo.data.tables import line_of

# Built-in names -> folder name under the data root (RECDEMO_DATA_DIR).
BUILTIN_FOLDERS = {
    "movielens-small": "ml-latest-small",
    "amazon-beauty": "amazon-beauty",
    "ml-1m": "ml-1m",
    "ml-20m": "ml-20m",
    "ml-25m": "ml-25m",
    "ml-32m": "ml-32m",
}
LIKED_RATING = 4.0  # ratings >= this count as "liked" (TALLRec labels)


@dataclass
class EvalCase:
    user: int  # position in Dataset.users
    history: np.ndarray  # catalog indices, oldest first
    target: int


@dataclass
class Dataset:
    name: str
    catalog: Catalog
    users: list[str]
    sequences: list[np.ndarray]  # per user, catalog indices in time order (file order breaks ties)
    ratings: list[np.ndarray] | None = None  # aligned with sequences, when the source has ratings
    source: str = ""

    @cached_property
    def content_hash(self) -> str:
        """Hash of what a model learns from: item ids/titles and every sequence (not file bytes)."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.catalog.ids).encode())
        h.update("\x1f".join(self.catalog.titles).encode())
        for seq in self.sequences:
            h.update(np.asarray(seq, dtype=np.int32).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    # -- leave-one-out: last item = test, second to last = validation, the rest = training --
    def train_sequences(self) -> list[np.ndarray]:
        return [s[:-2] if len(s) >= 3 else s for s in self.sequences]

    def train_ratings(self) -> list[np.ndarray] | None:
        if self.ratings is None:
            return None
        return [r[:-2] if len(r) >= 3 else r for r in self.ratings]

    def eval_cases(self, split: str = "test") -> list[EvalCase]:
        if split not in ("test", "valid"):
            raise ValueError("split must be 'test' or 'valid'")
        cut = 1 if split == "test" else 2
        return [EvalCase(u, s[:-cut], int(s[-cut])) for u, s in enumerate(self.sequences) if len(s) >= 3]

    def summary(self) -> dict:
        lens = [len(s) for s in self.sequences]
        return {"name": self.name, "users": len(self.users), "items": self.n_items,
                "interactions": self.n_interactions, "mean_length": float(np.mean(lens)),
                "hash": self.content_hash}

    def statistics(self) -> dict:
        """What a protocol comparison needs: how often users repeat an item, and the split sizes.

        ``repeat_share``: interactions whose item is already earlier in the same user's sequence,
        over all interactions (when it is near 0, ranking earlier items only wastes slots, so masked
        and unmasked numbers differ most). Splits (leave-one-out): a user with three or more items
        gives one ``valid`` case (second to last item) and one ``test`` case (last item); training
        sees the rest, where every item after a user's first is a next-item target."""
        repeats = sum(len(s) - len(np.unique(s)) for s in self.sequences)
        train = self.train_sequences()
        return {"users": len(self.users), "items": self.n_items, "interactions": self.n_interactions,
                "repeats": int(repeats), "repeat_share": repeats / self.n_interactions if self.n_interactions else 0.0,
                "train_interactions": int(sum(len(t) for t in train)),
                "train_targets": int(sum(max(len(t) - 1, 0) for t in train)),
                "valid_cases": len(self.eval_cases("valid")), "test_cases": len(self.eval_cases("test"))}


def build_dataset(raw: RawData, name: str, source: str = "") -> Dataset:
    """Validate references between the two tables, then group interactions into sequences."""
    items, inter = raw.items, raw.interactions  # values already stripped by read_table
    dup = items["item_id"].duplicated().to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        first = int(np.argmax((items["item_id"] == items["item_id"].iloc[i]).to_numpy()))
        raise DataError(f"duplicate item id {items['item_id'].iloc[i]!r} (first defined on line "
                        f"{line_of(items, first)})", file=raw.items_file, line=line_of(items, i),
                        column="item_id")
    for col in ("item_id", "title"):
        empty = (items[col].str.strip() == "").to_numpy()
        if empty.any():
            i = int(np.argmax(empty))
            raise DataError(f"empty {'title' if col == 'title' else 'value'}", file=raw.items_file,
                            line=line_of(items, i), column=col)
    for col in ("user_id", "item_id"):
        blank = (inter[col] == "").to_numpy()
        if blank.any():
            i = int(np.argmax(blank))
            raise DataError("empty value", file=raw.interactions_file,
                            line=line_of(inter, i), column=col)
    codes = pd.Index(items["item_id"]).get_indexer(inter["item_id"])  # position in items.csv, -1: unknown
    if (codes < 0).any():
        i = int(np.argmax(codes < 0))
        raise DataError(f"item id {inter['item_id'].iloc[i]!r} is not in {raw.items_file}",
                        file=raw.interactions_file, line=line_of(inter, i), column="item_id")

    # Only items someone interacted with can be learned or ranked; keep catalog order.
    keep = np.flatnonzero(np.bincount(codes, minlength=len(items)) > 0)
    remap = np.full(len(items), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    items = items.iloc[keep].reset_index(drop=True)
    catalog = Catalog(ids=items["item_id"].tolist(), titles=items["title"].tolist(),
                      attributes=list(items["attributes"]), descriptions=items["description"].tolist(),
                      attribute_name=raw.attribute_name)

    # Stable order: user, then timestamp, then position in the file (day-resolution ties).
    user_key = _sort_key(inter["user_id"])
    order = np.lexsort((np.arange(len(inter)), inter["timestamp"].to_numpy(), user_key))
    _, first = np.unique(user_key[order], return_index=True)
    bounds = list(first) + [len(inter)]
    item_arr = remap[codes][order]
    users = inter["user_id"].to_numpy(dtype=object)[order[first]].tolist()
    sequences = [item_arr[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    ratings = None
    if "rating" in inter.columns:
        r = _ratings(inter, raw.interactions_file)[order]
        ratings = [r[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return Dataset(name=name, catalog=catalog, users=users, sequences=sequences, ratings=ratings,
                   source=source)


def _ratings(inter: pd.DataFrame, fname: str) -> np.ndarray:
    """Ratings as float32; one too large for it (it would become inf) is an error, not a silent inf."""
    r = inter["rating"].to_numpy(np.float64)
    big = np.abs(r) > np.finfo(np.float32).max
    if big.any():
        i = int(np.argmax(big))
        raise DataError(f"the rating {r[i]:g} does not fit in a 32-bit float", file=fname,
                        line=line_of(inter, i), column="rating")
    return r.astype(np.float32)


def _sort_key(user_ids: pd.Series) -> np.ndarray:
    """An integer code per row, one per distinct user id string: whole-number ids sort numerically
    (2 before 10), any other ids by string. Ids like "7" and "007" stay two different users."""
    codes, uniques = pd.factorize(user_ids)
    numeric = pd.to_numeric(pd.Series(uniques), errors="coerce")
    if numeric.notna().all() and np.isclose(numeric.to_numpy() % 1, 0).all():
        order = np.lexsort((np.asarray(uniques, dtype=object).astype(str), numeric.to_numpy()))
    else:
        order = np.argsort(np.asarray(uniques, dtype=str), kind="stable")
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[order] = np.arange(len(uniques))
    return rank[codes]


def resolve_folder(name: str | None = None, data_dir: str | None = None, root: str | None = None) -> Path:
    """Folder for ``--data-dir PATH`` or a built-in name under the data root."""
    if data_dir:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder: --data-dir needs a folder holding "
                            "interactions.csv + items.csv (or a MovieLens layout)")
        return folder
    if name not in BUILTIN_FOLDERS:
        raise DataError(f"unknown dataset {name!r}: use one of {sorted(BUILTIN_FOLDERS)} "
                        "or --data-dir PATH")
    folder = Path(root or "data").expanduser() / BUILTIN_FOLDERS[name]
    if not folder.is_dir():
        hint = (f"run `python -m recdemo data download {name}`"
                if name in ("movielens-small", "amazon-beauty") else "download it from its publisher")
        raise DataError(f"dataset {name!r} not found at {folder}: {hint}, or set RECDEMO_DATA_DIR "
                        "to a folder that holds it")
    return folder


_CACHE: dict[tuple, Dataset] = {}


def load_dataset(name: str | None = "movielens-small", data_dir: str | None = None,
                 root: str | None = None, max_mb: float = 1024, max_field_chars: int | None = None) -> Dataset:
    """Load (and memoise per process) a built-in dataset or any folder in a supported layout.
    ``max_field_chars`` (uploads): a longer value in any field is a DataError."""
    folder = resolve_folder(name, data_dir, root).resolve()
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir())
                  if p.is_file())
    key = (str(folder), stamp, max_field_chars)
    if key not in _CACHE:
        label = name if not data_dir else folder.name
        raw = read_layout(folder, max_mb=max_mb, max_field_chars=max_field_chars)
        _CACHE[key] = build_dataset(raw, name=label, source=str(folder))
    return _CACHE[key]


def forget_dataset(folder: str | Path) -> None:
    """Drop ``folder``'s datasets from the per-process memo (the app, when an upload is removed)."""
    where = str(Path(folder).resolve())
    for key in [k for k in _CACHE if k[0] == where]:
        _CACHE.pop(key, None)


def load_from_config(cfg) -> Dataset:
    """``cfg`` is a DataConfig."""
    return load_dataset(cfg.dataset, cfg.data_dir, cfg.root, cfg.max_file_mb)
