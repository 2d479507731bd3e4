"""Removing what interrupted work leaves behind, at start and on a timer (AppContext runs it).

- In the folders the app writes (adapters, caches): storage.py's temp folders of interrupted
  writes (``.<name>.tmp-*``; ``.<name>.old-*`` when ``<name>`` is in place, else it is put back,
  as storage.recover_dir does) and fine-tunes' ``<name>.partial`` folders, once older than a limit.
  Finished adapters and every other file are never touched.
- Upload roots of app processes that are gone (killed, SIGTERM): each root holds ``owner.pid``.
- Gradio's upload cache (``gradio.utils.get_upload_folder()``: $GRADIO_TEMP_DIR or <tmp>/gradio):
  files older than a limit, then the folders left empty.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from recdemo.storage import recover_dir

log = logging.getLogger("recdemo.app")

UPLOAD_PREFIX = "recdemo-uploads-"
OWNER_FILE = "owner.pid"


def age_s(path: Path, now: float) -> float:
    """Seconds since ``path`` or anything directly in it last changed (a folder being written is young)."""
    try:
        times = [path.stat().st_mtime]
        if path.is_dir():
            times += [p.stat().st_mtime for p in path.iterdir()]
    except OSError:
        return 0.0
    return now - max(times)


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as e:
        log.warning("cleanup: could not remove %s (%s)", path.name, e)
        return False
    return True


def clean_work_dir(folder: str | Path, max_age_s: float, now: float | None = None) -> list[Path]:
    """Remove stale ``.<name>.tmp-*``, ``.<name>.old-*`` and ``<name>.partial`` entries of ``folder``
    (not recursively); returns what was removed."""
    folder, now = Path(folder), time.time() if now is None else now
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") and ".old-" in name:
            target = folder / name[1:name.index(".old-")]
            if not target.exists():  # a swap interrupted between its two renames: the old one is the data
                recover_dir(target)
                continue
        elif not ((name.startswith(".") and ".tmp-" in name) or (name.endswith(".partial") and path.is_dir())):
            continue
        if age_s(path, now) > max_age_s and _remove(path):
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def new_upload_root(parent: str | Path | None = None) -> Path:
    """A fresh upload root for this process, marked with its pid so a later start can tell that
    the process is gone and remove it."""
    root = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX, dir=parent))
    (root / OWNER_FILE).write_text(str(os.getpid()))
    return root


def clean_orphan_upload_roots(parent: str | Path | None = None, keep: Path | None = None,
                              max_age_s: float | None = None, now: float | None = None) -> list[Path]:
    """Remove upload roots whose process is gone (or, with ``max_age_s``, unmarked ones that old)."""
    parent = Path(parent or tempfile.gettempdir())
    now = time.time() if now is None else now
    removed = []
    for root in sorted(parent.glob(UPLOAD_PREFIX + "*")):
        if not root.is_dir() or (keep is not None and root.resolve() == Path(keep).resolve()):
            continue
        try:
            pid = int((root / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            pid = None
        gone = (pid is not None and not _alive(pid)) or (
            pid is None and max_age_s is not None and age_s(root, now) > max_age_s)
        if gone and _remove(root):
            removed.append(root)
    return removed


def gradio_cache_dir() -> Path:
    from gradio.utils import get_upload_folder  # gradio is heavy: only when the app runs

    return Path(get_upload_folder())


def clean_old_files(folder: str | Path, max_age_s: float, now: float | None = None) -> int:
    """Delete files under ``folder`` older than ``max_age_s``, then the folders left empty; returns
    how many files went. ``folder`` itself stays."""
    folder, now = Path(folder), time.time() if now is None else now
    if not folder.is_dir():
        return 0
    count = 0
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            path = here / name
            try:
                if now - path.lstat().st_mtime > max_age_s:
                    path.unlink()
                    count += 1
            except OSError:
                continue
        if here != folder:
            try:
                here.rmdir()  # only when empty
            except OSError:
                pass
    return count
