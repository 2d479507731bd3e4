"""Datasets uploaded through the app: name and size checks, then the project's own loader
(recdemo.data) validates the files and reports problems with file, line and column.

Errors name the files the way the user called them (``my_ratings.csv (interactions file)``), not
the names they are stored under, and a pair uploaded into the wrong boxes is recognised as such
instead of failing on the first missing column."""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

from recdemo.data.dataset import load_dataset
from recdemo.errors import DataError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FILES = ("interactions.csv", "items.csv")
ROLES = ("interactions", "items")
MIN_USERS, MIN_ITEMS = 2, 2
# Leave-one-out holds out each user's last two items (validation, test): a user with fewer than
# three interactions gives SASRec, fine-tuning and evaluation nothing to learn or check.
MIN_SEQUENCE = 3


def check_name(name: str, what: str) -> str:
    """A safe folder / adapter name, or ValueError with a sentence for the user."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise ValueError(f"{what} name: use 1-64 letters, digits, '-', '_' or '.', starting with a letter "
                         "or digit.")
    return name


def _header(path: Path) -> list[str]:
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        return [h.strip().lstrip("\ufeff") for h in next(csv.reader(f), [])]


def _count_rows(path: Path, max_rows: int) -> int | None:
    """The data row at which ``path`` passes ``max_rows`` rows, else None (a quick byte scan)."""
    rows = -1  # the header
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            rows += chunk.count(b"\n")
            if rows > max_rows:
                return rows
    return None


def _check_files(paths: list[Path], max_mb: float, max_rows: int | None = None) -> None:
    for label, path in zip(FILES, paths):
        if not path.is_file():
            raise DataError(f"the {label} file was not received; please upload it again", file=label)
        size = path.stat().st_size
        if size > max_mb * 2**20:
            raise DataError(f"the file is {size / 2**20:.1f} MB; uploads are limited to {max_mb:g} MB "
                            "(RECDEMO_MAX_UPLOAD_MB)", file=label)
        if max_rows is not None and _count_rows(path, max_rows) is not None:
            raise DataError(f"the file has more than {max_rows:,} rows, this server's limit for an upload "
                            "(limits.max_upload_rows)", file=label)
    inter_head, items_head = _header(paths[0]), _header(paths[1])
    if "user_id" not in inter_head and "user_id" in items_head and "title" in inter_head:
        raise DataError("the two files look swapped: the interactions file has a 'title' column and "
                        "the items file has 'user_id'", file=_shown(paths[0], 0), line=1, column="user_id")


def _shown(path: Path, role: int) -> str:
    """How an error names a file: the user's own name, with its role when that differs."""
    return FILES[role] if path.name == FILES[role] else f"{path.name} ({ROLES[role]} file)"


def _renamed(err: DataError, paths: list[Path]) -> DataError:
    """The loader names the stored copies (interactions.csv, items.csv): name the user's files."""
    for role, stored in enumerate(FILES):
        if err.file == stored and paths[role].name != stored:
            return DataError(err.reason, file=_shown(paths[role], role), line=err.line, column=err.column)
    return err


def _check_histories(dataset, shown: str) -> None:
    """Refuse data nothing can be trained or evaluated on (e.g. every user has one interaction)."""
    usable = sum(len(s) >= MIN_SEQUENCE for s in dataset.sequences)
    if usable < MIN_USERS:
        raise DataError(f"only {usable} of {len(dataset.users)} users have {MIN_SEQUENCE} or more interactions; "
                        f"training and evaluation hold out each user's last two items, so at least "
                        f"{MIN_USERS} users need {MIN_SEQUENCE} or more", file=shown)


def save_upload(root: Path, interactions_path: str | None, items_path: str | None, name: str,
                max_mb: float, max_field_chars: int | None = None,
                max_rows: int | None = None) -> tuple[str, dict]:
    """Copy the two files to ``root/name``, load them as a dataset (the folder's name becomes the
    dataset's name) and return (folder, summary). Nothing is left behind when they are invalid."""
    for label, path in zip(FILES, (interactions_path, items_path)):
        if not path:
            raise ValueError(f"Please upload {label}.")
    paths = [Path(interactions_path), Path(items_path)]
    _check_files(paths, max_mb, max_rows)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=False)
    try:
        for path, stored in zip(paths, FILES):
            shutil.copyfile(path, folder / stored)
        try:
            dataset = load_dataset(None, data_dir=str(folder), max_mb=max_mb, max_field_chars=max_field_chars)
        except DataError as e:
            raise _renamed(e, paths) from None
        if len(dataset.users) < MIN_USERS or dataset.n_items < MIN_ITEMS:
            raise DataError(f"too little data: {len(dataset.users)} user(s) and {dataset.n_items} item(s); "
                            f"a dataset needs at least {MIN_USERS} users and {MIN_ITEMS} items",
                            file=_shown(paths[0], 0))
        _check_histories(dataset, _shown(paths[0], 0))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return str(folder), dataset.summary()
