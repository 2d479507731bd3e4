"""Datasets uploaded through the app: name and size checks, then the project's own loader
(recdemo.data) validates the files and reports problems with file, line and column."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from recdemo.errors import DataError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FILES = ("interactions.csv", "items.csv")


def check_name(name: str, what: str) -> str:
    """A safe folder / adapter name, or ValueError with a sentence for the user."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise ValueError(f"{what} name: use 1-64 letters, digits, '-', '_' or '.', starting with a letter "
                         "or digit.")
    return name


def save_upload(root: Path, interactions_path: str | None, items_path: str | None, name: str,
                max_mb: float, max_field_chars: int | None = None) -> tuple[str, dict]:
    """Copy the two files to ``root/name``, load them as a dataset (the folder's name becomes the
    dataset's name) and return (folder, summary). Nothing is left behind when they are invalid."""
    for label, path in zip(FILES, (interactions_path, items_path)):
        if not path:
            raise ValueError(f"Please upload {label}.")
        size = Path(path).stat().st_size
        if size > max_mb * 2**20:
            raise DataError(f"the file is {size / 2**20:.1f} MB; uploads are limited to {max_mb:g} MB "
                            "(RECDEMO_MAX_UPLOAD_MB)", file=label)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=False)
    try:
        shutil.copyfile(interactions_path, folder / FILES[0])
        shutil.copyfile(items_path, folder / FILES[1])
        from recdemo.data.dataset import load_dataset
        dataset = load_dataset(None, data_dir=str(folder), max_mb=max_mb, max_field_chars=max_field_chars)
        if len(dataset.users) < 2 or dataset.n_items < 2:
            raise DataError("too little data: a dataset needs at least 2 users and 2 items", file=FILES[0])
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return str(folder), dataset.summary()
