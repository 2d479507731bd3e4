"""Dataset loading time: the built-in datasets, and a synthetic MovieLens-20M-shaped file that takes
the fast (pandas C parser) path.

    python bench/data_load.py                       # movielens-small, amazon-beauty (if present)
    python bench/data_load.py --synthetic 5000000   # plus a generated ratings.csv with 5M rows

Each dataset is loaded in a fresh call (the in-process memo is cleared). Prints a table and writes
bench/results/data_load.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recdemo.config import Config  # noqa: E402
from recdemo.data import dataset as dataset_module  # noqa: E402
from recdemo.data import load_dataset  # noqa: E402
from recdemo.data.tables import EXACT_PARSE_MB  # noqa: E402


def timed_load(**kw) -> tuple[float, object]:
    dataset_module._CACHE.clear()
    start = time.perf_counter()
    ds = load_dataset(**kw)
    return time.perf_counter() - start, ds


def synthetic(folder: Path, rows: int, seed: int = 0) -> None:
    """A ratings.csv + movies.csv pair shaped like ml-20m (20k movies, 138k users at full size)."""
    rng = np.random.default_rng(seed)
    n_movies, n_users = 20_000, max(rows // 145, 2)
    users = np.sort(rng.integers(1, n_users + 1, rows))
    movies = rng.zipf(1.3, rows) % n_movies + 1
    ratings = rng.integers(1, 11, rows) / 2
    stamps = rng.integers(800_000_000, 1_500_000_000, rows)
    with (folder / "ratings.csv").open("w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for chunk in range(0, rows, 1_000_000):
            sl = slice(chunk, chunk + 1_000_000)
            lines = [f"{u},{m},{r:.1f},{t}" for u, m, r, t in zip(users[sl], movies[sl], ratings[sl], stamps[sl])]
            f.write("\n".join(lines) + "\n")
    with (folder / "movies.csv").open("w") as f:
        f.write("movieId,title,genres\n")
        f.writelines(f"{i},Synthetic Movie {i} ({1950 + i % 70}),Drama|Comedy\n" for i in range(1, n_movies + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthetic", type=int, default=0, help="rows of a generated ml-20m-like ratings.csv")
    args = ap.parse_args()
    cfg = Config.from_env()
    results = []
    for name in ("movielens-small", "amazon-beauty"):
        try:
            seconds, ds = timed_load(name=name, root=cfg.data.root)
        except Exception as e:  # not downloaded: say so, measure the rest
            print(f"{name}: skipped ({e})")
            continue
        results.append({"dataset": name, "seconds": round(seconds, 3), "interactions": ds.n_interactions,
                        "path": "exact (csv module)"})
    if args.synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "ml-20m"
            folder.mkdir()
            synthetic(folder, args.synthetic)
            mb = (folder / "ratings.csv").stat().st_size / 2**20
            seconds, ds = timed_load(name=None, data_dir=str(folder))
            results.append({"dataset": f"synthetic {args.synthetic:,} rows ({mb:.0f} MB)",
                            "seconds": round(seconds, 3), "interactions": ds.n_interactions,
                            "path": "fast (pandas C parser)" if mb > EXACT_PARSE_MB else "exact (csv module)"})
    load = os.getloadavg()[0]
    for r in results:
        r["load_average"] = round(load, 2)
    print(f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"{'dataset':40} {'interactions':>12} {'load s':>8}  parser")
    for r in results:
        print(f"{r['dataset']:40} {r['interactions']:12,} {r['seconds']:8.2f}  {r['path']}")
    out = ROOT / "bench" / "results" / "data_load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
