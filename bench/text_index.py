"""Text index: embedding time, query latency, and how often a misspelt title is found at rank 1.

    python bench/text_index.py                              # movielens-small, cached embeddings
    python bench/text_index.py --rebuild                    # also time embedding the whole catalog
    python bench/text_index.py --dataset amazon-beauty --items 300

Queries are generated, not stored: the N most popular items' titles as people type them
("the matrix", lower case, no year), then one edit each (deletion, transposition, substitution),
a prefix (first 60%), and the clean title. A hit is the target (or an item with the very same
name, e.g. two films called "Hamlet") at rank 1 / in the top 5. Three scorers are compared:
lexical (+ popularity) only, embeddings only, and the combination `search()` uses. Prints a table and writes
bench/results/text_index_<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recdemo.config import Config  # noqa: E402
from recdemo.data import load_dataset  # noqa: E402
from recdemo.data.catalog import _PAREN, natural_title, normalize_title  # noqa: E402
from recdemo.retrieval.text_index import POPULARITY_WEIGHT, TextIndex  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def typed_name(title: str) -> str:
    """How a person writes the title: article in front, no year or alternative titles, lower case."""
    return _PAREN.sub("", natural_title(title)).strip().lower()


def make_query(name: str, kind: str, rng: random.Random) -> str:
    letters = [i for i, ch in enumerate(name) if ch.isalpha()]
    if kind == "clean" or len(letters) < 4:
        return name
    i = rng.choice(letters[1:])  # people rarely get the first letter wrong
    if kind == "deletion":
        return name[:i] + name[i + 1:]
    if kind == "transposition":
        j = i if i + 1 < len(name) and name[i + 1].isalpha() else letters[1]
        return name[:j] + name[j + 1] + name[j] + name[j + 2:]
    if kind == "substitution":
        return name[:i] + rng.choice([c for c in LETTERS if c != name[i]]) + name[i + 1:]
    if kind == "prefix":
        return name[: max(4, int(len(name) * 0.6))]
    raise ValueError(kind)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--items", type=int, default=200, help="most popular items used as targets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true", help="embed the catalog again (temp cache)")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(2)
    cfg = Config.from_env()
    ds = load_dataset(args.dataset, root=cfg.data.root)
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.rebuild:  # embed into a temp folder, then keep the result as the project's cache
        with tempfile.TemporaryDirectory() as tmp:
            index = TextIndex.for_dataset(ds, cfg.retrieval, cache_dir=tmp)
            build_s, build_cpu = time.perf_counter() - start, time.process_time() - cpu_start
            for f in Path(tmp).glob("*.safetensors"):
                Path(cfg.retrieval.text_cache_dir).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, Path(cfg.retrieval.text_cache_dir) / f.name)
    else:
        index = TextIndex.for_dataset(ds, cfg.retrieval)
        build_s, build_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    load = os.getloadavg()[0]

    cat = ds.catalog
    names = [normalize_title(typed_name(t)) for t in cat.titles]
    top = np.argsort(-index.popularity, kind="stable")[: args.items]
    rng = random.Random(args.seed)
    kinds = ["clean", "deletion", "transposition", "substitution", "prefix"]
    queries = [(make_query(typed_name(cat.titles[i]), kind, rng), int(i), kind) for i in top for kind in kinds]

    rows, lat = {}, {"lexical": [], "search": []}
    query_vecs = index.encode([q for q, _, _ in queries])  # one batch: the hit rates need every query
    for n, ((q, target, kind), qvec) in enumerate(zip(queries, query_vecs)):
        t0 = time.perf_counter()
        lex = index.matcher.scores(q)
        lat["lexical"].append(time.perf_counter() - t0)
        sem = index.embeddings @ qvec
        if n % 10 == 0:  # latency of the full search (encodes the query itself) on a sample
            t0 = time.perf_counter()
            index.search(q, k=5)
            lat["search"].append(time.perf_counter() - t0)
        ranked = {"lexical": np.argsort(-(lex + POPULARITY_WEIGHT * index.popularity))[:5],
                  "embedding": np.argsort(-sem)[:5],
                  "search": [i for i, _ in index.search_with_vector(q, qvec, k=5)]}
        for name, ids in ranked.items():
            hit1 = names[ids[0]] == names[target]
            hit5 = any(names[i] == names[target] for i in ids)
            r = rows.setdefault((name, kind), [0, 0, 0])
            r[0] += hit1
            r[1] += hit5
            r[2] += 1

    print(f"dataset {args.dataset}: {len(cat)} items; TextIndex.for_dataset {build_s:.1f} s wall, "
          f"{build_cpu:.1f} s CPU ({'embedded now' if index.build_seconds else 'from cache'}); "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"{'scorer':10} {'query':14} {'hit@1':>7} {'hit@5':>7} {'n':>5}")
    result = {"dataset": args.dataset, "items": len(cat), "for_dataset_s": round(build_s, 2),
              "for_dataset_cpu_s": round(build_cpu, 2), "embedded_now": bool(index.build_seconds),
              "load_average": round(load, 2), "cpus": os.cpu_count(), "targets": args.items,
              "seed": args.seed, "hits": {}}
    for (name, kind), (h1, h5, n) in sorted(rows.items()):
        print(f"{name:10} {kind:14} {h1 / n:7.3f} {h5 / n:7.3f} {n:5d}")
        result["hits"].setdefault(name, {})[kind] = {"hit@1": round(h1 / n, 4), "hit@5": round(h5 / n, 4), "n": n}
    for name, values in lat.items():
        ms = 1000 * np.array(values)
        print(f"latency {name:8}: median {np.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms")
        result[f"latency_ms_{name}"] = {"median": round(float(np.median(ms)), 2),
                                        "p95": round(float(np.percentile(ms, 95)), 2)}
    out = ROOT / "bench" / "results" / f"text_index_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
