"""Writing files and folders so that a crash, Ctrl-C or cancel at any moment leaves either the
old version or the new one, never a mix. The one helper every writer in the project uses.

- ``write_file_atomically(path, write)``: ``write(tmp)`` fills a temp file beside ``path``, then one
  rename puts it in place (``write_text_atomically`` / ``write_json_atomically`` for the common cases).
- ``write_dir_atomically(target, write)``: the same for a whole folder (adapters, datasets, checkpoints).
Ground layer: imports nothing from recdemo.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable


def write_file_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp path in ``path``'s folder, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp makes it private; these are ordinary readable data files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_file_atomically(path, lambda tmp: tmp.write_text(text))


def write_json_atomically(path: str | Path, obj, **dump_kwargs) -> Path:
    text = json.dumps(obj, **{"indent": 1, **dump_kwargs})
    return write_text_atomically(path, text)


def write_dir_atomically(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temp folder beside ``target``, then swap it into place.

    The old folder is renamed aside first (a non-empty folder cannot be replaced in one rename)
    and deleted only once the new one is in place; if anything fails, the old one is put back."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old = None
    try:
        write(tmp)
        _readable(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; an adapter folder is ordinary readable data."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o644)


def recover_dir(target: str | Path) -> None:
    """A crash between the two renames above leaves only ``.<name>.old-*``: put it back."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], target)
