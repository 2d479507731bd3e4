"""Base model vs a fine-tuned adapter: the `score` ranker on validation users' candidate lists.

    python bench/finetune_eval.py --adapter movielens-small --users 200 --threads 1

Candidates: SASRec's top-50 when its checkpoint exists, else item-kNN's top-50 (training
co-occurrence; a stand-in for SASRec, labelled as such). The validation item is NOT inserted: a user
whose item is not in the list is a miss for every order, and costs no LLM time. Per order (LLM alone,
the candidate generator's own order, and the fused order at the weight fusion.select_weight picks on
these same users, hence optimistic) it reports HR/NDCG@10 and MRR, for the base model and the adapter.
Prints a table and writes bench/results/finetune_eval-<adapter>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import recdemo  # noqa: E402,F401  (sets OpenMP defaults before torch loads: config.OPENMP_DEFAULTS)
import torch  # noqa: E402


class KNNCandidates:
    """Item-kNN as a candidate generator with the retriever's ``top_k`` shape."""

    def __init__(self, dataset):
        from recdemo.retrieval.baselines import ItemKNN
        self.knn = ItemKNN.for_dataset(dataset)

    def top_k(self, history, k=50):
        s = self.knn.score_all(history).astype(np.float64)
        s[np.asarray(list(history), dtype=np.int64)] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        return [(int(i), float(s[i])) for i in top]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=None, help="default: the adapter's meta.json dataset")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from recdemo.config import Config
    from recdemo.finetune.examples import ExampleBuilder
    from recdemo.finetune.validate import ranking_metrics
    from recdemo.llm.stack import Stack

    cfg = Config.from_env()
    service = Stack(cfg).service
    name = service.register_adapter(args.adapter)
    meta = service.adapters.meta(name)
    stack = Stack.from_config(cfg, service=service, dataset_name=args.dataset or meta["dataset"],
                              train_retriever=False, retriever_text_fallback=False)
    ds, source = stack.dataset, "sasrec"
    retriever = stack.optional_retriever(
        lambda e: print(f"note: no SASRec checkpoint ({str(e)[:120]}...); candidates from item-kNN"))
    if retriever is None:  # no checkpoint: item-kNN stands in
        retriever, source = KNNCandidates(ds), "item_knn"
    cases = ds.eval_cases("valid")
    pick = np.random.default_rng(args.seed).permutation(len(cases))[: args.users]
    cases = [cases[i] for i in sorted(pick)]
    builder = ExampleBuilder(ds, service.llm.tokenizer, max_history=meta.get("max_history", 20))

    results = {}
    for label, adapter in (("base", None), ("adapter", name)):
        start = time.perf_counter()
        with service.use_adapter(adapter) as llm:
            m = ranking_metrics(llm.model, builder, cases, retriever, 50, device=llm.device, llm_name=llm.name)
        m["seconds"] = round(time.perf_counter() - start, 1)
        results[label] = {k.replace("sasrec_", f"{source}_"): v for k, v in m.items()}
        print(f"{label}: {m['seconds']} s")
    keys = ["hr@10", "ndcg@10", "mrr", f"{source}_hr@10", f"{source}_ndcg@10", f"{source}_mrr",
            "fused_hr@10", "fused_ndcg@10", "fusion_weight", "users", "users_with_target_in_candidates"]
    print(f"\n{'metric':<34}{'base':>10}{'adapter':>10}")
    for k in keys:
        b, a = results["base"].get(k), results["adapter"].get(k)
        fmt = (lambda v: f"{v:.4f}" if isinstance(v, float) else str(v))
        print(f"{k:<34}{fmt(b):>10}{fmt(a):>10}")
    report = {"dataset": ds.name, "adapter": name, "candidates_from": source, "users": len(cases),
              "seed": args.seed, "model": service.llm.describe(), "threads": args.threads, **results}
    out = ROOT / "bench" / "results" / f"finetune_eval-{name}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
