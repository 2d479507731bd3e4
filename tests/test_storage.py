"""storage: atomic files and folders (a failed write keeps the old version, a crash is recovered)."""
from __future__ import annotations

import json

import pytest

from recdemo.storage import recover_dir, write_dir_atomically, write_file_atomically, write_json_atomically


def test_failed_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "w.bin").write_bytes(b"old")

    def broken(tmp):
        (tmp / "w.bin").write_bytes(b"new-but-incomplete")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dir_atomically(target, broken)
    assert (target / "w.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]

    write_dir_atomically(target, lambda tmp: (tmp / "w.bin").write_bytes(b"new"))
    assert (target / "w.bin").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_crash_between_renames_is_recovered(tmp_path):
    old = tmp_path / ".adapter.old-1234abcd"
    old.mkdir()
    (old / "w.bin").write_bytes(b"old")
    recover_dir(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "w.bin").read_bytes() == b"old"


def test_failed_file_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "meta.json"
    write_json_atomically(target, {"v": 1})

    def broken(tmp):
        tmp.write_text("{half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_file_atomically(target, broken)
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]
    write_json_atomically(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2} and oct(target.stat().st_mode & 0o777) == "0o644"
