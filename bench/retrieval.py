"""Retrieval benchmark: SASRec training time and top-50 latency for one history.

    python bench/retrieval.py                      # latency; training time from the checkpoints' reports
    python bench/retrieval.py --train              # also retrain (not saved) and time it here
    python bench/retrieval.py --datasets movielens-small --queries 500

Prints a table and writes bench/results/retrieval.json. Timings depend on the machine and on what
else runs on it; the JSON records the thread count and CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import recdemo  # noqa: E402,F401  (sets OpenMP defaults before torch loads: config.OPENMP_DEFAULTS)
import torch  # noqa: E402

from recdemo.config import Config  # noqa: E402
from recdemo.llm.stack import Stack  # noqa: E402
from recdemo.retrieval.train import train_sasrec  # noqa: E402


def latency(fn, histories, warmup: int = 10) -> dict:
    for h in histories[:warmup]:
        fn(h)
    times = []
    for h in histories:
        t = time.perf_counter()
        fn(h)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(np.mean(times)), "n": len(times)}


def bench_dataset(name: str, cfg: Config, queries: int, train: bool, seed: int) -> dict:
    stack = Stack.from_config(cfg, dataset_name=name, retriever_text_fallback=False)
    dataset, retriever = stack.dataset, stack.retriever
    rng = np.random.default_rng(seed)
    cases = dataset.eval_cases("test")
    histories = [cases[i].history.tolist() for i in rng.choice(len(cases), size=min(queries, len(cases)),
                                                               replace=False)]
    report = retriever.meta.get("report", {})
    row = {
        "dataset": name, "items": dataset.n_items, "users": len(dataset.users),
        "checkpoint_train": {k: report.get(k) for k in ("seconds", "seconds_per_epoch", "seconds_to_best",
                                                        "best_epoch", "epochs_run", "torch_threads")},
        "top_k_50": latency(lambda h: retriever.top_k(h, 50), histories),
        "score_all_dense": latency(retriever.score_all, histories),
        "mean_history_len": float(np.mean([len(h) for h in histories])),
    }
    if train:
        _, rep = train_sasrec(dataset, cfg.retrieval, progress=True)
        row["train_here"] = {k: rep[k] for k in ("seconds", "seconds_per_epoch", "seconds_to_best",
                                                 "best_epoch", "epochs_run", "torch_threads")}
        row["train_here"]["valid_ndcg@10"] = rep["valid"].get("ndcg@10")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["movielens-small", "amazon-beauty"])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--train", action="store_true", help="retrain here to time training (minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "retrieval.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = Config.from_env()
    if "RECDEMO_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        cfg = cfg.set("data", "root", str(ROOT.parent / "shared" / "data"))
    rows = [bench_dataset(n, cfg, args.queries, args.train, args.seed) for n in args.datasets]

    print(f"{'dataset':<16}{'train s/epoch':>14}{'to best (s)':>12}{'best ep':>8}"
          f"{'top50 p50 ms':>14}{'top50 p99 ms':>14}{'dense p50 ms':>14}")
    for r in rows:
        t = r.get("train_here") or r["checkpoint_train"]
        src = "here" if "train_here" in r else "ckpt"
        fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
        print(f"{r['dataset']:<16}{fmt(t['seconds_per_epoch'], '.1f') + ' (' + src + ')':>14}"
              f"{fmt(t['seconds_to_best'], '.0f'):>12}{fmt(t['best_epoch'], 'd'):>8}"
              f"{r['top_k_50']['p50_ms']:>14.2f}{r['top_k_50']['p99_ms']:>14.2f}{r['score_all_dense']['p50_ms']:>14.2f}")
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "torch_threads": torch.get_num_threads(),
                       "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "datasets": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
