"""Are the explanations true, and who wrote them? Plus: what do the profile keywords say?

    python bench/explanations.py --dataset movielens-small --users 200 --label after
    python bench/explanations.py --report            # rescore every stored run, write the tables

Generation (per dataset and ``--label``): held-out users (their test case: the history before the
last item, newest 20 kept) drawn with seed 0; SASRec's top 10 of the top 50 are explained with the
configured LLM (SmolLM2-135M on CPU by default) as the demo explains them; the profile is generated
too (``--no-profile`` skips it). Every sentence the model wrote, the one shown, their evidence and
the profile keywords are stored in ``bench/results/explanations-<dataset>-<label>.raw.json``.

Report: every stored run is rescored with today's claim checks (``recdemo/llm/claims.py``), so a run
made with older code ("before") is judged by the same rules as the new one:
- ``llm_failed[check]``: share of the model's sentences failing each check BEFORE any fallback;
- ``shown_llm_share``: share of the shown sentences that the LLM wrote (rationale_source "llm");
- ``shown_failed``: share of the shown sentences failing any check (goal 0);
- keywords: share of the profile's keywords that are not a genre/category name (goal: more).
Writes bench/results/explanations.json and explanations.md. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def held_out_users(dataset, n: int, seed: int = 0) -> list:
    cases = dataset.eval_cases("test")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(cases), min(n, len(cases)), replace=False)
    return [cases[int(i)] for i in picked]


def generate(args) -> None:
    from recdemo.config import Config
    from recdemo.llm.explain import Explainer
    from recdemo.llm.stack import Stack

    torch.set_num_threads(args.threads)
    stack = Stack.from_config(Config.from_env(), dataset_name=args.dataset)
    data, service = stack.dataset, stack.service
    retriever = stack.retriever
    explainer = Explainer(service, data, retriever, stack.text_index)
    profiles = stack.profiles
    rows, started = [], time.perf_counter()
    for n, case in enumerate(held_out_users(data, args.users)[: args.limit]):
        history = [int(i) for i in case.history][-20:]
        items = [i for i, _ in retriever.top_k(history, 50)][:10]
        t = time.perf_counter()
        out = explainer.explain(history, items)
        t_explain = time.perf_counter() - t
        keywords = []
        if args.profile:
            profiles._cache.clear()
            keywords = [{"text": k.text, "grounded": k.grounded, "source": k.source, "support": k.support}
                        for k in profiles.generate(history).keywords]
        rows.append({"user": case.user, "history": history, "items": items, "explain_s": round(t_explain, 3),
                     "keywords": keywords,
                     "explanations": [{"index": e.index, "evidence": e.evidence, "rationale": e.rationale,
                                       "rationale_source": e.rationale_source, "llm_rationale": e.llm_rationale,
                                       "failed_checks": list(getattr(e, "failed_checks", []) or [])}
                                      for e in out]})
        print(f"{n + 1} users, {time.perf_counter() - started:.0f} s, last explain {t_explain:.2f} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"explanations-{args.dataset}-{args.label}.raw.json"
    out_path.write_text(json.dumps({"dataset": args.dataset, "label": args.label, "users": len(rows),
                                    "model": service.describe(), "threads": args.threads,
                                    "explain_max_new_tokens": explainer.max_new_tokens,
                                    "seconds": round(time.perf_counter() - started, 1),
                                    "load_avg_1m": round(os.getloadavg()[0], 2),
                                    "command": "python " + " ".join(sys.argv), "rows": rows}, separators=(",", ":")))
    print(f"wrote {out_path}")


def score_run(run: dict, dataset) -> dict:
    from recdemo.llm.claims import CHECKS, ClaimChecker, is_category_word

    cat = dataset.catalog
    llm_failed = {c: 0 for c in CHECKS}
    n_llm = n_shown = n_shown_llm = n_shown_failed = 0
    kw_total = kw_non_category = kw_grounded_non_category = 0
    for row in run["rows"]:
        for e in row["explanations"]:
            checker = ClaimChecker.for_item(cat, row["history"], e["index"], e["evidence"])
            if e["llm_rationale"]:
                n_llm += 1
                for c in checker.failures(e["llm_rationale"]):
                    llm_failed[c] += 1
            n_shown += 1
            n_shown_llm += e["rationale_source"] == "llm"
            n_shown_failed += bool(checker.failures(e["rationale"]))
        for k in row["keywords"]:
            kw_total += 1
            if not is_category_word(k["text"], cat):
                kw_non_category += 1
                kw_grounded_non_category += bool(k["grounded"])
    share = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    return {"dataset": run["dataset"], "label": run["label"], "users": run["users"], "model": run["model"],
            "explain_max_new_tokens": run["explain_max_new_tokens"], "seconds": run["seconds"],
            "command": run["command"], "llm_sentences": n_llm,
            "llm_failed": {c: share(v, n_llm) for c, v in llm_failed.items()},
            "llm_failed_any": share(sum(bool(ClaimChecker.for_item(cat, r["history"], e["index"], e["evidence"])
                                             .failures(e["llm_rationale"]))
                                        for r in run["rows"] for e in r["explanations"] if e["llm_rationale"]), n_llm),
            "shown_sentences": n_shown, "shown_llm_share": share(n_shown_llm, n_shown),
            "shown_failed": share(n_shown_failed, n_shown),
            "keywords": kw_total, "keywords_non_category_share": share(kw_non_category, kw_total),
            "keywords_non_category_grounded_share": share(kw_grounded_non_category, kw_total)}


def report() -> None:
    from recdemo.config import Config
    from recdemo.data import load_from_config

    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("explanations-*.raw.json"))]
    common = {}  # per dataset: the users every run of it explained (runs of different lengths compare fairly)
    for run in runs:
        users = {r["user"] for r in run["rows"]}
        common[run["dataset"]] = common.get(run["dataset"], users) & users
    datasets, out = {}, []
    for run in runs:
        run = {**run, "rows": [r for r in run["rows"] if r["user"] in common[run["dataset"]]]}
        run["users"] = len(run["rows"])
        if run["dataset"] not in datasets:
            cfg = Config.from_env().set("data", "dataset", run["dataset"])
            datasets[run["dataset"]] = load_from_config(cfg.data)
        out.append(score_run(run, datasets[run["dataset"]]))
    (RESULTS / "explanations.json").write_text(json.dumps(out, indent=1))
    checks = list(out[0]["llm_failed"]) if out else []
    lines = ["# Explanations: claim checks and profile keywords", "",
             "Generated by `bench/explanations.py` (commands below); every run rescored by today's checks "
             "(`python bench/explanations.py --report`). `before`: main's code at the branch point (explain.py's "
             "title-only check, 16 new tokens); `after`: this branch. Runs of one dataset are compared on the "
             "users they share. Held-out users (test case), SASRec's top 10, SmolLM2-135M on a shared 2-core CPU.",
             "", "Shares are of the LLM's sentences as written (before any fallback or trimming) and of the "
             "sentences shown. Keywords: share of the profile's keywords that are not only genre/category names "
             "(amazon-beauty has no categories, so every keyword counts).", "",
             "| dataset | run | users | LLM sentences failing (before fallback): "
             + " / ".join(checks) + " / any | LLM share of shown | shown failing | keywords not a genre/category |",
             "|---|---|---|---|---|---|---|"]
    for r in out:
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        fails = " / ".join(pct(r["llm_failed"][c]) for c in checks)
        lines.append(f"| {r['dataset']} | {r['label']} | {r['users']} | {fails} / {pct(r['llm_failed_any'])} "
                     f"| {pct(r['shown_llm_share'])} | {pct(r['shown_failed'])} "
                     f"| {pct(r['keywords_non_category_share'])} |")
    lines += ["", "Commands:", ""] + [f"- {r['dataset']} {r['label']}: `{r['command']}` ({r['seconds']} s, "
                                      f"{r['explain_max_new_tokens']} new tokens)" for r in out]
    (RESULTS / "explanations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--limit", type=int, default=None,
                    help="stop after the first N of the --users drawn (the same users as a longer run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label", default="after", help="names the run: before (main's code) or after")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--report", action="store_true", help="only rescore the stored runs and write the tables")
    args = ap.parse_args()
    if args.report:
        report()
    else:
        generate(args)


if __name__ == "__main__":
    main()
