"""How often a room's explanation rows come from the explainer's cache (``LLMConfig.explain_cache_rows``).

    python bench/explain_cache.py                          # movielens-small, 200 requests
    python bench/explain_cache.py --dataset amazon-beauty --requests 200

An explanation prompt holds the recommended item and its strongest evidence item only, so another user
with the same pair gets the model's sentence from the cache. The requests are bench/load.py's: histories
no earlier request sent (real users' training histories, cut at a random length), in its order. Each runs
retrieval and the rerank (score ranker, shipped adapter), then plans its ten explanation rows; a row is a
hit when an earlier request (or an earlier row of its own) made the same prompt: the cache's hit
condition, with the cache large enough for every row. No explanation is generated, so this takes
minutes, not the hour the real requests would. Prints and writes bench/results/explain_cache-<dataset>.json/.md:
the hits per block of requests and in all.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import recdemo  # noqa: E402,F401  (sets OpenMP defaults before torch loads)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--block", type=int, default=20, help="requests per row of the table")
    ap.add_argument("--seed", type=int, default=0, help="bench/load.py's history pool seed")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return ap.parse_args(argv)


def planned_prompts(rec, history: list[str], ranker: str) -> list[str]:
    """The explanation prompts of one request: its reranked top-k, planned, not generated."""
    for state in rec.recommend_stages(history, ranker=ranker, with_profile=False, with_explanations=False):
        last = state
    hist = [h["index"] for h in last.history]  # the titles as the request resolved them
    return rec.explainer.plan([(hist, [r["index"] for r in last.results])]).prompts


def count_hits(rec, histories: list[list[str]], ranker: str, block: int) -> dict:
    """Rows, and rows whose prompt an earlier row made, per ``block`` of requests and in all."""
    seen, blocks = set(), []
    for n, history in enumerate(histories):
        if n % block == 0:
            blocks.append({"requests": f"{n + 1}-{n + block}", "rows": 0, "hits": 0})
        for prompt in planned_prompts(rec, history, ranker):
            blocks[-1]["rows"] += 1
            blocks[-1]["hits"] += prompt in seen
            seen.add(prompt)
    rows, hits = sum(b["rows"] for b in blocks), sum(b["hits"] for b in blocks)
    return {"requests": len(histories), "rows": rows, "hits": hits, "hit_share": round(hits / max(rows, 1), 4),
            "distinct_prompts": len(seen),
            "blocks": [{**b, "hit_share": round(b["hits"] / max(b["rows"], 1), 4)} for b in blocks]}


def measure(args) -> dict:
    from load import histories

    from recdemo.config import Config
    from recdemo.pipeline.recommender import Recommender

    cfg = Config.from_env()
    rec = Recommender.from_config(cfg, dataset_name=args.dataset)
    t = time.perf_counter()
    counted = count_hits(rec, histories(args.dataset, args.requests, args.seed), cfg.llm.ranker, args.block)
    return {"dataset": args.dataset, "ranker": cfg.llm.ranker, **counted,
            "seconds": round(time.perf_counter() - t, 1),
            "command": "python bench/explain_cache.py " + " ".join(sys.argv[1:])}


def table(r: dict) -> str:
    lines = [f"# Explanation rows answered from the cache: {r['dataset']}, {r['ranker']} ranker", "",
             f"{r['requests']} requests of distinct histories (bench/load.py's pool, in order); `{r['command']}`", "",
             "| requests | rows | from the cache |", "|---|---|---|"]
    lines += [f"| {b['requests']} | {b['rows']} | {b['hits']} ({100 * b['hit_share']:.1f}%) |" for b in r["blocks"]]
    lines.append(f"| all | {r['rows']} | {r['hits']} ({100 * r['hit_share']:.1f}%) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse(argv)
    r = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"explain_cache-{args.dataset}.json").write_text(json.dumps(r, indent=1) + "\n")
    (out / f"explain_cache-{args.dataset}.md").write_text(table(r))
    print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
