"""Speed and faithfulness of the two LLM steps around the ranker: the profile and the explanations.

    python bench/explain_profile.py                          # movielens-small, 5 users, 2 threads
    python bench/explain_profile.py --dataset amazon-beauty --users 3 --threads 1

For each of --users held-out users (``eval.core.sample_cases``, seed 0, at least 5 history items; their
test case's history, newest 20 items kept), with the configured LLM (SmolLM2-135M on CPU by default):
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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--users", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--explain-tokens", type=int, default=None, help="max new tokens per rationale")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: the config's, auto)")
    return ap.parse_args()


def build(args):
    """(dataset, service, item-kNN, profile generator, explainer) from the project's one stack."""
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
    knn = ItemKNN.for_dataset(data)
    explainer = Explainer(service, data, None, knn=knn)
    if args.explain_tokens:
        explainer.max_new_tokens = args.explain_tokens
    return data, service, knn, ProfileGenerator(service, data.catalog), explainer


def time_user(history: list[int], items: list[int], profiles, explainer, tok) -> dict:
    """One user's profile (its cache cleared first) and explanations of ``items``, timed (wall and CPU)."""
    profiles._cache.clear()
    load = os.getloadavg()[0]
    t, c = time.perf_counter(), time.process_time()
    profile = profiles.generate(history)
    t_profile, c_profile = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    expl = explainer.explain(history, items)
    t_explain, c_explain = time.perf_counter() - t, time.process_time() - c
    explain_tokens = [len(tok(p, add_special_tokens=False).input_ids) for p in explainer.last_prompts]
    return {"load_avg_1m": round(load, 2), "profile_s": round(t_profile, 3), "profile_cpu_s": round(c_profile, 3),
            "profile_prompt_tokens": len(tok(profile.prompt, add_special_tokens=False).input_ids),
            "explain_cpu_s": round(c_explain, 3),
            "llm_keywords": sum(k.source == "llm" for k in profile.keywords),
            "llm_grounded": sum(k.source == "llm" and k.grounded for k in profile.keywords),
            "heuristic_added": sum(k.source == "heuristic" for k in profile.keywords),
            "explain_s": round(t_explain, 3), "explain_prompt_tokens_mean": round(float(np.mean(explain_tokens)), 1),
            "rationales_llm": sum(e.rationale_source == "llm" for e in expl), "rationales": len(expl),
            "keywords": [k.text for k in profile.keywords], "summary": profile.summary,
            "example_rationale": expl[0].rationale if expl else ""}


def summarize(args, rows: list[dict], service, explainer) -> dict:
    """Means and maxima over the measured users (the warm-up left out)."""
    from recdemo.llm.models import describe_cpu

    measured = [r for r in rows if not r["warmup"]]

    def mean(key):
        return round(float(np.mean([r[key] for r in measured])), 3)

    def share(part, whole):
        return round(sum(r[part] for r in measured) / max(sum(r[whole] for r in measured), 1), 3)

    return {"dataset": args.dataset, "model": service.describe(), "threads": args.threads, "users": len(measured),
            "items_explained": args.items, "explain_max_new_tokens": explainer.max_new_tokens,
            "machine": describe_cpu(), "profile_s_mean": mean("profile_s"),
            "profile_s_max": round(float(np.max([r["profile_s"] for r in measured])), 3),
            "profile_cpu_s_mean": mean("profile_cpu_s"), "explain_s_mean": mean("explain_s"),
            "explain_cpu_s_mean": mean("explain_cpu_s"),
            "explain_s_max": round(float(np.max([r["explain_s"] for r in measured])), 3),
            "llm_keywords_grounded_share": share("llm_grounded", "llm_keywords"),
            "profiles_needing_heuristics": sum(r["heuristic_added"] > 0 for r in measured),
            "rationales_kept_share": share("rationales_llm", "rationales"),
            "load_avg_1m_mean": round(float(np.mean([r["load_avg_1m"] for r in measured])), 2)}


def main() -> None:
    from recdemo.eval.core import sample_cases

    args = parse_args()
    torch.set_num_threads(args.threads)
    data, service, knn, profiles, explainer = build(args)
    rows = []
    for n, case in enumerate(sample_cases(data, "test", args.users + 1, min_history=5)):  # + a warm-up
        user, history = case.user, [int(i) for i in case.history][-20:]
        scores = knn.score_all(history)
        scores[history] = -np.inf
        items = [int(i) for i in np.argsort(-scores, kind="stable")[: args.items]]
        row = {"user": user, "warmup": n == 0, **time_user(history, items, profiles, explainer, service.llm.tokenizer)}
        rows.append(row)
        print(f"{'(warm-up) ' if n == 0 else ''}user {user}: profile {row['profile_s']:.2f} s wall / "
              f"{row['profile_cpu_s']:.2f} s CPU ({row['profile_prompt_tokens']} tok), explain x{row['rationales']} "
              f"{row['explain_s']:.2f} s wall / {row['explain_cpu_s']:.2f} s CPU, LLM sentences kept "
              f"{row['rationales_llm']}/{row['rationales']}, load {row['load_avg_1m']:.1f}", flush=True)
    summary = summarize(args, rows, service, explainer)
    print(f"\n{'metric':<34}{'value':>12}")
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
