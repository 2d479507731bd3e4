"""Speed and faithfulness of the two LLM steps around the ranker: the profile and the explanations.

    python bench/explain_profile.py                          # movielens-small, 5 users, 2 threads
    python bench/explain_profile.py --dataset amazon-beauty --users 3 --threads 1

For each of --users real users (their last 20 training items), with the configured LLM (SmolLM2-135M
on CPU by default):
- profile: seconds for `ProfileGenerator.generate` (cache cleared), prompt tokens, how many
  keywords the LLM wrote, how many were grounded, how many heuristic ones were added;
- explanations: seconds for `Explainer.explain` on 10 items (item-kNN's top 10, so no SASRec
  checkpoint is needed), i.e. ONE batched generate call, and how many of the 10 LLM sentences
  passed the title check (the rest were replaced by templates).
The first call of each kind is a warm-up and is not counted. The machine's load average is
recorded: other processes on the same cores slow every wall-clock number down; the CPU seconds
(process time) are what the work costs, so with --threads 1 they approximate the wall time on an
idle core. Prints a table and writes
bench/results/explain_profile[-<dataset>].json. Nothing is asserted.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--users", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--explain-tokens", type=int, default=None, help="max new tokens per rationale")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: the config's, auto)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from recdemo.config import Config
    from recdemo.llm.explain import Explainer
    from recdemo.llm.profile import ProfileGenerator
    from recdemo.llm.stack import Stack
    from recdemo.retrieval.baselines import ItemKNN

    cfg = Config.from_env()
    if args.dtype:
        cfg = cfg.set("llm", "dtype", args.dtype)
    stack = Stack.from_config(cfg, dataset_name=args.dataset)
    data, service = stack.dataset, stack.service
    tok = service.llm.tokenizer
    knn = ItemKNN.for_dataset(data)
    profiles = ProfileGenerator(service, data.catalog)
    explainer = Explainer(service, data, None, knn=knn)
    if args.explain_tokens:
        explainer.max_new_tokens = args.explain_tokens
    train = data.train_sequences()
    rng = np.random.default_rng(0)
    users = [int(u) for u in rng.choice([u for u, s in enumerate(train) if len(s) >= 5], args.users + 1,
                                        replace=False)]
    rows = []
    for n, user in enumerate(users):
        history = [int(i) for i in train[user][-20:]]
        scores = knn.score_all(history)
        scores[history] = -np.inf
        items = [int(i) for i in np.argsort(-scores, kind="stable")[: args.items]]
        profiles._cache.clear()
        load = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        profile = profiles.generate(history)
        t_profile, c_profile = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        expl = explainer.explain(history, items)
        t_explain, c_explain = time.perf_counter() - t, time.process_time() - c
        prompt_tokens = len(tok(profile.prompt, add_special_tokens=False).input_ids)
        explain_tokens = [len(tok(p, add_special_tokens=False).input_ids) for p in explainer.last_prompts]
        row = {"user": user, "warmup": n == 0, "load_avg_1m": round(load, 2),
               "profile_s": round(t_profile, 3), "profile_cpu_s": round(c_profile, 3),
               "profile_prompt_tokens": prompt_tokens, "explain_cpu_s": round(c_explain, 3),
               "llm_keywords": sum(k.source == "llm" for k in profile.keywords),
               "llm_grounded": sum(k.source == "llm" and k.grounded for k in profile.keywords),
               "heuristic_added": sum(k.source == "heuristic" for k in profile.keywords),
               "explain_s": round(t_explain, 3), "explain_prompt_tokens_mean": round(float(np.mean(explain_tokens)), 1),
               "rationales_llm": sum(e.rationale_source == "llm" for e in expl), "rationales": len(expl),
               "keywords": [k.text for k in profile.keywords], "summary": profile.summary,
               "example_rationale": expl[0].rationale if expl else ""}
        rows.append(row)
        print(f"{'(warm-up) ' if n == 0 else ''}user {user}: profile {t_profile:.2f} s wall / {c_profile:.2f} s CPU "
              f"({prompt_tokens} tok), explain x{len(expl)} {t_explain:.2f} s wall / {c_explain:.2f} s CPU, "
              f"LLM sentences kept {row['rationales_llm']}/{len(expl)}, load {load:.1f}", flush=True)
    measured = [r for r in rows if not r["warmup"]]
    summary = {
        "dataset": args.dataset, "model": service.describe(), "threads": args.threads, "users": len(measured),
        "items_explained": args.items, "explain_max_new_tokens": explainer.max_new_tokens,
        "cpu_count": os.cpu_count(),
        "profile_s_mean": round(float(np.mean([r["profile_s"] for r in measured])), 3),
        "profile_s_max": round(float(np.max([r["profile_s"] for r in measured])), 3),
        "profile_cpu_s_mean": round(float(np.mean([r["profile_cpu_s"] for r in measured])), 3),
        "explain_s_mean": round(float(np.mean([r["explain_s"] for r in measured])), 3),
        "explain_cpu_s_mean": round(float(np.mean([r["explain_cpu_s"] for r in measured])), 3),
        "explain_s_max": round(float(np.max([r["explain_s"] for r in measured])), 3),
        "llm_keywords_grounded_share": round(sum(r["llm_grounded"] for r in measured)
                                             / max(sum(r["llm_keywords"] for r in measured), 1), 3),
        "profiles_needing_heuristics": sum(r["heuristic_added"] > 0 for r in measured),
        "rationales_kept_share": round(sum(r["rationales_llm"] for r in measured)
                                       / max(sum(r["rationales"] for r in measured), 1), 3),
        "load_avg_1m_mean": round(float(np.mean([r["load_avg_1m"] for r in measured])), 2),
    }
    print()
    print(f"{'metric':<34}{'value':>12}")
    for key, value in summary.items():
        print(f"{key:<34}{str(value):>12}")
    suffix = ("" if args.dataset == "movielens-small" else f"-{args.dataset}") + (f"-{args.dtype}" if args.dtype else "") + \
        (f"-tok{args.explain_tokens}" if args.explain_tokens else "")
    out = ROOT / "bench" / "results" / f"explain_profile{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows, "command": " ".join(sys.argv)}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
