"""When each streamed stage of one request reaches the page: the demo's speed as a user sees it.

    python bench/stages.py                                   # movielens-small, score ranker, 8 users
    python bench/stages.py --dataset amazon-beauty --ranker palr --users 4 --out bench/results

For each of --users real held-out users (the last --history items of their training history, 5 by
default, as in issue 17's measurement), ``Recommender.recommend_stages`` runs with the configured LLM
(SmolLM2-135M on CPU by default) and the dataset's shipped adapter ("auto"). The seconds from the
call to each yielded state are recorded: "retrieval" (SASRec's provisional top-10, the first state the
page shows), "profile", "rerank", each "explain" state (a card, or the cards whose rows finished in the same decode
step), and "done" (the final answer); the order of profile and rerank depends on the ranker. The profile and
explanation caches are cleared before every user, so no answer is a cache hit; one warm-up request
is not counted. Prints a table (p50 / p90 per stage) with the load average, and with --out writes
stages-<dataset>-<ranker>.json there. Nothing is asserted: targets live in the issue, figures here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import recdemo  # noqa: E402,F401  (sets OpenMP defaults before torch loads: config.OPENMP_DEFAULTS)
import torch  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--ranker", default="score")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--history", type=int, default=5, help="items per history (the newest training items)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="folder for stages-<dataset>-<ranker>.json")
    return ap.parse_args(argv)


def histories(rec, n: int, size: int, seed: int) -> list[list[str]]:
    """The newest ``size`` training items of ``n`` seeded held-out users, as titles."""
    from recdemo.eval.core import sample_cases

    cases = sample_cases(rec.dataset, "test", n + 1, seed)
    return [[rec.catalog.titles[int(i)] for i in c.history[-size:]] for c in cases]


def forget_caches(rec) -> None:
    """No answer may come from an earlier user's work (the issue asks for "no cache hit")."""
    rec._explained.clear()  # explanations per (history, model, item)
    rec.profiles._cache.clear()  # profiles per (last 20 items, model, adapter)


def time_stages(rec, history: list[str], ranker: str) -> list[tuple[str, float]]:
    forget_caches(rec)
    t0 = time.perf_counter()
    return [(state.stage, time.perf_counter() - t0)
            for state in rec.recommend_stages(history, ranker=ranker)]


def summarise(runs: list[list[tuple[str, float]]]) -> dict:
    """p50/p90 seconds per stage name (the "explain" states: the first and the last explained card)."""
    by_stage: dict[str, list[float]] = {}
    for run in runs:
        explains = [s for name, s in run if name == "explain"]
        for name, s in run:
            if name != "explain":
                by_stage.setdefault(name, []).append(s)
        if explains:
            by_stage.setdefault("first explanation", []).append(explains[0])
            by_stage.setdefault("last explanation", []).append(explains[-1])
    return {name: {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "n": len(v)}
            for name, v in by_stage.items()}


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from recdemo.config import Config
    from recdemo.llm.models import describe_cpu
    from recdemo.pipeline.recommender import Recommender

    load_start = os.getloadavg()
    rec = Recommender.from_config(Config.from_env(), dataset_name=args.dataset)
    hists = histories(rec, args.users, args.history, args.seed)
    time_stages(rec, hists[-1], args.ranker)  # warm-up: model load, adapter, retriever, shapes
    runs = [time_stages(rec, h, args.ranker) for h in hists[:args.users]]
    result = {"dataset": args.dataset, "ranker": args.ranker, "users": args.users, "history_items": args.history,
              "threads": args.threads, "model": rec.service.describe(), "machine": describe_cpu(),
              "stages_s": summarise(runs),
              "runs": [[[name, round(s, 3)] for name, s in run] for run in runs],
              "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
              "command": "python bench/stages.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(f"{args.dataset}, {args.ranker} ranker, {args.users} users x {args.history} items, "
          f"{result['model']}, {result['machine']['cpu']} ({result['machine']['capability']}), "
          f"load {load_start[0]:.2f} -> {result['load_avg_end'][0]:.2f}")
    print(f"{'stage reached':<26}{'p50 s':>8}{'p90 s':>8}")
    for name, v in result["stages_s"].items():
        print(f"{name:<26}{v['p50']:>8.2f}{v['p90']:>8.2f}")
    if args.out:
        path = Path(args.out) / f"stages-{args.dataset}-{args.ranker}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
