"""app/cleanup.py: what interrupted writes, fine-tunes, killed processes and gradio leave behind
goes; shipped files and finished adapters stay byte-identical."""
import os
import subprocess
import sys
import time
from pathlib import Path

from recdemo.app import cleanup
from recdemo.storage import write_dir_atomically

HOUR = 3600.0


def aged(path: Path, hours: float) -> Path:
    """Backdate ``path`` and everything directly in it."""
    t = time.time() - hours * HOUR
    for p in [path, *(path.iterdir() if path.is_dir() else [])]:
        os.utime(p, (t, t))
    return path


def folder(path: Path, files=("adapter_config.json", "adapter_model.safetensors")) -> Path:
    path.mkdir(parents=True)
    for f in files:
        (path / f).write_bytes(b"x" * 10)
    return path


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stale_temp_and_partial_folders_go_finished_adapters_stay(tmp_path):
    adapters = tmp_path / "adapters"
    shipped = aged(folder(adapters / "movielens-small"), 100)  # old, but a finished adapter
    fresh = folder(adapters / "mine")
    stale = [aged(folder(adapters / ".mine.tmp-abc123"), 10), aged(folder(adapters / "mine.partial"), 10),
             aged(folder(adapters / ".mine.old-1a2b3c4d"), 10)]  # "mine" is in place: the old copy is junk
    (adapters / ".meta.json.tmp-x1").write_text("{")
    aged(adapters / ".meta.json.tmp-x1", 10)
    young = [folder(adapters / ".other.tmp-def456"), folder(adapters / "other.partial")]  # a run in progress
    plain = aged(folder(adapters / "notes"), 50)
    keep = snapshot(shipped) | {"mine/" + k: v for k, v in snapshot(fresh).items()}

    removed = cleanup.clean_work_dir(adapters, max_age_s=6 * HOUR)

    assert sorted(removed) == sorted(stale + [adapters / ".meta.json.tmp-x1"])
    assert not any(p.exists() for p in removed)
    assert all(p.exists() for p in young + [plain])
    assert snapshot(shipped) | {"mine/" + k: v for k, v in snapshot(fresh).items()} == keep


def test_an_interrupted_swap_is_put_back_not_deleted(tmp_path):
    """Only .<name>.old-* is left when a crash hit between write_dir_atomically's two renames."""
    target = tmp_path / "adapters" / "mine"
    write_dir_atomically(target, lambda d: (d / "adapter_config.json").write_text("{}"))
    old = target.parent / ".mine.old-0badf00d"
    os.replace(target, old)
    aged(old, 48)
    assert cleanup.clean_work_dir(tmp_path / "adapters", max_age_s=HOUR) == []
    assert (target / "adapter_config.json").read_text() == "{}" and not old.exists()


def test_upload_roots_of_dead_processes_go(tmp_path):
    mine = cleanup.new_upload_root(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / (cleanup.UPLOAD_PREFIX + "killed")
    folder(orphan / "abc" / "shop", ("interactions.csv", "items.csv"))
    (orphan / cleanup.OWNER_FILE).write_text(str(dead.pid))
    alive = tmp_path / (cleanup.UPLOAD_PREFIX + "other-app")
    folder(alive / "x", ("items.csv",))
    (alive / cleanup.OWNER_FILE).write_text(str(os.getppid()))  # a process that is running
    unmarked_old = aged(folder(tmp_path / (cleanup.UPLOAD_PREFIX + "old"), ("items.csv",)), 48)
    unmarked_new = folder(tmp_path / (cleanup.UPLOAD_PREFIX + "new"), ("items.csv",))
    unrelated = aged(folder(tmp_path / "something-else", ("items.csv",)), 48)

    removed = cleanup.clean_orphan_upload_roots(tmp_path, keep=mine, max_age_s=24 * HOUR)

    assert sorted(removed) == sorted([orphan, unmarked_old])
    assert mine.is_dir() and alive.is_dir() and unmarked_new.is_dir() and unrelated.is_dir()


def test_old_files_in_gradios_cache_go_new_ones_stay(tmp_path):
    cache = tmp_path / "gradio"
    old = cache / "0f1e2d" / "interactions.csv"
    new = cache / "9a8b7c" / "items.csv"
    for f in (old, new):
        f.parent.mkdir(parents=True)
        f.write_text("x")
    t = time.time() - 10 * HOUR
    os.utime(old, (t, t))
    assert cleanup.clean_old_files(cache, max_age_s=6 * HOUR) == 1
    assert not old.parent.exists() and new.exists() and cache.is_dir()


def test_gradio_cache_dir_is_gradios_own_upload_folder():
    from gradio.utils import get_upload_folder

    assert cleanup.gradio_cache_dir() == Path(get_upload_folder())
