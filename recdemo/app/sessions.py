"""Datasets uploaded through the app, and adapters fine-tuned on them, per browser session.

Each belongs to the session that made it: it is stored under ``<root>/<session digest>/`` and
known by a key ``<name>@<digest>`` that no request can name (names never contain '@'), so other
sessions can neither use it nor learn that the name is taken. A session's folder goes when the
session ends (``end``), or when its uploads grow older than a limit (``sweep``).
"""
from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

from recdemo.llm.adapters import is_adapter_dir


def session_digest(session: str) -> str:
    """What stands for a browser session in keys and folder names (never its hash itself)."""
    return hashlib.sha256(str(session).encode()).hexdigest()[:16]


def private_key(name: str, session: str) -> str:
    return f"{name}@{session_digest(session)}"


def display_name(key: str) -> str:
    return key.split("@")[0]


class SessionStore:
    """Uploads by key, their owners, and where each session's adapters go. Thread-safe."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock = threading.Lock()
        self.folders: dict[str, str] = {}  # key -> folder
        self._owner: dict[str, str] = {}  # key -> session digest
        self._added: dict[str, float] = {}  # key -> time of the upload
        self._ended: set[str] = set()  # digests of sessions that closed (their folders may go at once)

    # -- lookups --
    def key(self, name, session: str | None) -> str | None:
        """The key of ``session``'s upload called ``name``, or None (also for other sessions')."""
        if not session or not isinstance(name, str) or "@" in name:
            return None
        key = private_key(name, session)
        with self._lock:
            return key if key in self.folders else None

    def names(self, session: str | None) -> list[str]:
        """The names of ``session``'s uploads, oldest first."""
        if not session:
            return []
        digest = session_digest(session)
        with self._lock:
            keys = sorted((k for k, d in self._owner.items() if d == digest), key=self._added.get)
        return [display_name(k) for k in keys]

    def sessions(self) -> set[str]:
        """Digests of the sessions holding uploads now."""
        with self._lock:
            return set(self._owner.values())

    def folder_for(self, session: str) -> Path:
        """Where ``session``'s uploads are stored."""
        return self.root / session_digest(session)

    # -- adapters --
    def adapter_folder(self, name: str, session: str) -> Path:
        """Where a fine-tune of ``session`` writes adapter ``name`` (its folder name is the key)."""
        return self.folder_for(session) / "adapters" / private_key(name, session)

    def adapters(self, session: str | None) -> list[str]:
        """Names of ``session``'s finished adapters."""
        if not session:
            return []
        folder = self.folder_for(session) / "adapters"
        if not folder.is_dir():
            return []
        return sorted(display_name(p.name) for p in folder.iterdir() if is_adapter_dir(p))

    def adapter_key(self, name, session: str | None) -> str | None:
        """The key of ``session``'s finished adapter ``name``, or None."""
        if not session or not isinstance(name, str) or "@" in name or "/" in name:
            return None
        return private_key(name, session) if is_adapter_dir(self.adapter_folder(name, session)) else None

    # -- changes --
    def add(self, session: str, name: str, folder: str) -> str:
        key = private_key(name, session)
        with self._lock:
            self.folders[key], self._owner[key], self._added[key] = folder, session_digest(session), time.time()
            self._ended.discard(session_digest(session))
        return key

    def end(self, session: str) -> dict[str, str]:
        """Forget ``session``'s uploads; returns {key: folder} (the caller removes the files)."""
        digest = session_digest(session)
        with self._lock:
            self._ended.add(digest)
            return self._forget([k for k, d in self._owner.items() if d == digest])

    def expired(self, max_age_s: float, now: float | None = None) -> dict[str, str]:
        """Forget the uploads older than ``max_age_s``; returns {key: folder}."""
        now = time.time() if now is None else now
        with self._lock:
            return self._forget([k for k, t in self._added.items() if now - t > max_age_s])

    def _forget(self, keys: list[str]) -> dict[str, str]:
        out = {}
        for key in keys:
            out[key] = self.folders.pop(key, None)
            self._owner.pop(key, None)
            self._added.pop(key, None)
        return out

    def orphan_folders(self, busy: set[str], min_age_s: float = 60.0, now: float | None = None) -> list[Path]:
        """Session folders whose session holds no upload and runs no job (``busy``: digests with
        an active job); young ones are skipped (an upload may be on its way in) unless their
        session has ended."""
        now = time.time() if now is None else now
        live = self.sessions() | busy
        if not self.root.is_dir():
            return []
        with self._lock:
            ended = set(self._ended)
        return [p for p in self.root.iterdir()
                if p.is_dir() and p.name not in live and (p.name in ended or now - p.stat().st_mtime > min_age_s)]

    @staticmethod
    def remove(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
