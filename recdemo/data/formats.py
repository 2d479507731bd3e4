"""Dataset layouts on disk, each read into two validated tables: interactions and items.

Supported (detected from the files present in a folder):
- generic (what users upload): interactions.csv ``user_id,item_id,timestamp[,rating]`` and
  items.csv ``item_id,title[,description][,categories]`` (categories separated by ``|``);
- MovieLens CSV (ml-latest-small, ml-20m, ml-25m, ml-32m): ratings.csv + movies.csv;
- MovieLens ml-1m: ratings.dat + movies.dat, ``::``-separated, latin-1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recdemo.errors import DataError
from recdemo.data.tables import read_table


@dataclass
class RawData:
    """Interactions (user_id, item_id: str, timestamp: int, rating: float|absent) and items
    (item_id: str, title, attributes: tuple, description) - the same shape for every layout."""
    interactions: pd.DataFrame
    items: pd.DataFrame
    attribute_name: str
    interactions_file: str
    items_file: str


def detect_layout(folder: Path) -> str:
    if (folder / "interactions.csv").is_file() or (folder / "items.csv").is_file():
        return "generic"
    if (folder / "ratings.csv").is_file() and (folder / "movies.csv").is_file():
        return "movielens-csv"
    if (folder / "ratings.dat").is_file() and (folder / "movies.dat").is_file():
        return "movielens-dat"
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise DataError(
        "no dataset found: expected interactions.csv + items.csv (see README, 'Your own data'), "
        f"or MovieLens ratings.csv + movies.csv / ratings.dat + movies.dat; found {present}",
        file=str(folder))


def read_layout(folder: str | Path, max_mb: float = 1024, max_field_chars: int | None = None) -> RawData:
    """``max_mb`` per file; ``max_field_chars`` (uploads): the longest value any field may hold."""
    folder = Path(folder)
    layout = detect_layout(folder)
    read = {"generic": _read_generic, "movielens-csv": _read_movielens_csv,
            "movielens-dat": _read_movielens_dat}[layout]
    return read(folder, {"max_mb": max_mb, "max_field_chars": max_field_chars})


def _split_attrs(values: pd.Series) -> list[tuple[str, ...]]:
    out = []
    for v in values:
        parts = [p.strip() for p in str(v).replace(";", "|").split("|")]
        out.append(tuple(p for p in parts if p and p != "(no genres listed)"))
    return out


def _read_generic(folder: Path, limits: dict) -> RawData:
    for name in ("interactions.csv", "items.csv"):
        if not (folder / name).is_file():
            raise DataError(f"missing {name}: a dataset folder needs interactions.csv and items.csv",
                            file=str(folder))
    inter = read_table(folder / "interactions.csv", ["user_id", "item_id", "timestamp"],
                       optional=["rating"], numeric={"timestamp": "number", "rating": "float"},
                       **limits)
    items = read_table(folder / "items.csv", ["item_id", "title"],
                       optional=["description", "categories"], **limits)
    items["attributes"] = _split_attrs(items["categories"]) if "categories" in items else [()] * len(items)
    if "description" not in items:
        items["description"] = ""
    return RawData(inter, items, "categories", "interactions.csv", "items.csv")


def _read_movielens_csv(folder: Path, limits: dict) -> RawData:
    inter = read_table(folder / "ratings.csv", ["userId", "movieId", "rating", "timestamp"],
                       numeric={"timestamp": "int", "rating": "float"}, **limits)
    inter = inter.rename(columns={"userId": "user_id", "movieId": "item_id"})
    items = read_table(folder / "movies.csv", ["movieId", "title", "genres"], **limits)
    items = items.rename(columns={"movieId": "item_id"})
    items["attributes"] = _split_attrs(items["genres"])
    items["description"] = ""
    return RawData(inter, items, "genres", "ratings.csv", "movies.csv")


def _read_movielens_dat(folder: Path, limits: dict) -> RawData:
    inter = read_table(folder / "ratings.dat", [], names=["user_id", "item_id", "rating", "timestamp"],
                       numeric={"timestamp": "int", "rating": "float"}, sep="::", encoding="latin-1",
                       **limits)
    items = read_table(folder / "movies.dat", [], names=["item_id", "title", "genres"], sep="::",
                       encoding="latin-1", **limits)
    items["attributes"] = _split_attrs(items["genres"])
    items["description"] = ""
    return RawData(inter, items, "genres", "ratings.dat", "movies.dat")
