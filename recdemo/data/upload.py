"""Datasets uploaded through the app: two files in the generic format, validated before they stay.

``load_uploaded`` copies the files into a temp folder under the uploads root, reads and validates
them there, and only then renames the folder to ``upload-<hash>``: a bad upload leaves nothing
behind, and uploading the same two files again reuses the folder.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from recdemo.data.dataset import Dataset, build_dataset
from recdemo.errors import DataError
from recdemo.data.formats import read_layout

ROLES = {"interactions": "interactions.csv", "items": "items.csv"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_USERS, MIN_ITEMS = 2, 2


def _check_file(path: Path, role: str, max_mb: float) -> None:
    if not path.is_file():
        raise DataError(f"the {role} file was not received", file=path.name)
    size = path.stat().st_size
    if size > max_mb * 2**20:
        raise DataError(f"the {role} file is {size / 2**20:.1f} MB, over the {max_mb:g} MB upload limit",
                        file=path.name)


def _header(path: Path) -> list[str]:
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        return [h.strip().lstrip("\ufeff") for h in next(csv.reader(f), [])]


def _files_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        h.update(b"\x00|")
    return h.hexdigest()


def load_uploaded(interactions_path: str | Path, items_path: str | Path, max_mb: float = 50,
                  uploads_root: str | Path | None = None, name: str | None = None) -> Dataset:
    """Validate and keep an uploaded pair of files; returns the loaded Dataset.

    The folder is ``uploads_root/name`` (an existing name is refused), or without a name
    ``uploads_root/upload-<hash of the files>`` (the same files again reuse it). Errors are
    DataErrors naming the file as the user called it (e.g. ``my_ratings.csv (interactions file)``).
    """
    if uploads_root is None:
        from recdemo.config import DataConfig
        uploads_root = Path(DataConfig().root) / "uploads"
    paths = {"interactions": Path(interactions_path), "items": Path(items_path)}
    for role, path in paths.items():
        _check_file(path, role, max_mb)
    inter_head, items_head = _header(paths["interactions"]), _header(paths["items"])
    if "user_id" not in inter_head and "user_id" in items_head and "title" in inter_head:
        raise DataError("the two files look swapped: the interactions file has a 'title' column and "
                        "the items file has 'user_id'", file=paths["interactions"].name, line=1,
                        column="user_id")

    root = Path(uploads_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if name is not None:
        if not NAME_RE.match(name):
            raise ValueError("dataset name: use 1-64 letters, digits, '-', '_' or '.', starting with a "
                             "letter or digit")
        final = root / name
        if final.exists():
            raise ValueError(f"a dataset named {name!r} already exists; choose another name")
    else:
        digest = _files_hash(paths["interactions"], paths["items"])
        name, final = f"upload-{digest[:8]}", root / f"upload-{digest[:16]}"
        if final.is_dir():  # the same two files were uploaded before: already validated
            return build_dataset(read_layout(final, max_mb=max_mb), name=name, source=str(final))

    work = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))
    try:
        for role, path in paths.items():
            shutil.copyfile(path, work / ROLES[role])
        try:
            dataset = build_dataset(read_layout(work, max_mb=max_mb), name=name, source=str(final))
        except DataError as e:
            raise _renamed(e, paths) from None
        if len(dataset.users) < MIN_USERS or dataset.n_items < MIN_ITEMS:
            raise DataError(f"too little data: {len(dataset.users)} user(s) and {dataset.n_items} item(s); "
                            f"a dataset needs at least {MIN_USERS} users and {MIN_ITEMS} items",
                            file=paths["interactions"].name)
        try:
            os.replace(work, final)
        except OSError:  # a parallel upload of the same files won the race: use theirs
            if not final.is_dir():
                raise
        return dataset
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _renamed(err: DataError, paths: dict[str, Path]) -> DataError:
    """The same error, naming the file the way the user called it."""
    for role, stored in ROLES.items():
        if err.file == stored and paths[role].name != stored:
            return DataError(err.reason, file=f"{paths[role].name} ({role} file)", line=err.line,
                             column=err.column)
    return err
