"""Are the explanations true, and who wrote them? Plus: what do the profile keywords say?

    python bench/explanations.py --dataset movielens-small --users 200 --label after
    python bench/explanations.py --report            # rescore every stored run, write the tables

Generation (per dataset and ``--label``): held-out users (their test case: the history before the
last item, newest 20 kept) drawn with seed 0 (``eval.core.sample_cases``, as every bench draws them;
runs before s13 took the same users in the order drawn, so their ``--limit`` runs hold other users);
SASRec's top 10 of the top 50 are explained with the configured LLM (SmolLM2-135M on CPU by default)
as the demo explains them; the profile is generated too (``--no-profile`` skips it). Every sentence the
model wrote, the one shown, their evidence and the profile keywords are stored in
``bench/results/explanations-<dataset>-<label>.raw.json``.

Report: every stored run (a raw file here; the others keep their scores from explanations.json) is
rescored with today's claim checks (``recdemo/llm/claims.py``), so a run made with older code ("before")
is judged by the same rules as the new one:
- ``llm_failed[check]``: share of the model's sentences failing each check BEFORE any fallback;
- ``shown_llm_share``: share of the shown sentences that the LLM wrote (rationale_source "llm");
- ``shown_failed``: share of the shown sentences failing any check (goal 0);
- keywords: share of the profile's keywords that are not a genre/category name (goal: more).
Writes bench/results/explanations.json and explanations.md. Nothing is asserted.

``--int8 channel|tensor`` runs the model with its linear layers in int8 (torch's dynamic quantization,
weights per output channel or per tensor): the one way left to more speed on a CPU without bf16
arithmetic, measured here for what it does to the sentences (docs/notes/app.md).
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
RESULTS = ROOT / "bench" / "results"


def shared_prefix(token_lists) -> int:
    """Tokens every list starts with (the prefix a shared-prefix decoder prefills once)."""
    n = 0
    while all(len(t) > n for t in token_lists) and len({t[n] for t in token_lists}) == 1:
        n += 1
    return n


def token_counts(tok, prompts: list[str], tails: list[str]) -> dict:
    """One user's explanation request measured by tokenizing: prompt tokens (all rows), the prefix all
    rows share, the tokens the decoder prefills (each group of rows with a common start, as
    ``decode.prefix_groups`` groups them: the start once + each row's rest; rows with and without a
    count of users who had both start with different worked examples), and the tokens the model
    wrote (all rows, and the longest row: a batched call runs that many steps)."""
    from recdemo.config import LLMConfig
    from recdemo.llm.decode import prefix_groups

    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    made = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in tails]
    groups = prefix_groups([torch.tensor(i) for i in ids], LLMConfig().prefix_min_tokens) if ids else []
    prefill = sum(start + sum(len(ids[m]) - start for m in members) for members, start in groups)
    return {"prompt": sum(map(len, ids)), "shared_prefix": shared_prefix(ids), "prefill_shared_once": prefill,
            "generated": sum(made), "generated_max_row": max(made, default=0)}


def explain_batch(explainer, retriever, cases, profiles, with_profile: bool) -> list[dict]:
    """The rows of ``cases`` (users), their explanations made in ONE batched model call."""
    tok = explainer.service.llm.tokenizer
    requests = []
    for case in cases:
        history = [int(i) for i in case.history][-20:]
        requests.append((history, [i for i, _ in retriever.top_k(history, 50)][:10]))
    t = time.perf_counter()
    outs = explainer.explain_many(requests)
    t_explain = (time.perf_counter() - t) / max(len(cases), 1)
    prompts, tails, rows, at = explainer.last_prompts, explainer.last_tails, [], 0
    for case, (history, items), out in zip(cases, requests, outs):
        tokens = token_counts(tok, prompts[at:at + len(items)], tails[at:at + len(items)]) if tails else {}
        at += len(items)
        keywords = []
        if with_profile:
            profiles._cache.clear()
            profile = profiles.generate(history)
            keywords = [{"text": k.text, "grounded": k.grounded, "source": k.source, "support": k.support}
                        for k in profile.keywords]
            tokens["profile_prompt"] = len(tok(profile.prompt, add_special_tokens=False)["input_ids"])
            tokens["profile_answer"] = len(tok(profile.raw, add_special_tokens=False)["input_ids"])
        rows.append({"user": case.user, "history": history, "items": items, "explain_s": round(t_explain, 3),
                     "keywords": keywords, "tokens": tokens,
                     "explanations": [{"index": e.index, "evidence": e.evidence, "rationale": e.rationale,
                                       "rationale_source": e.rationale_source, "llm_rationale": e.llm_rationale,
                                       "failed_checks": list(getattr(e, "failed_checks", []) or [])}
                                      for e in out]})
    return rows


def quantize_int8(llm, granularity: str) -> None:
    """``llm.model`` replaced by a copy whose ``nn.Linear`` layers compute in int8 (activations quantized
    per call, weights once; ``granularity``: "channel" or "tensor" weight scales). The copy is made from
    a deep copy: the served model's packed linears copy as plain ``nn.Linear``, which torch converts."""
    import copy

    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if granularity == "channel" else default_dynamic_qconfig
    llm.model = quantize_dynamic(copy.deepcopy(llm.model), {torch.nn.Linear: qconfig}, dtype=torch.qint8)


def generate(args) -> None:
    from recdemo.config import Config
    from recdemo.eval.core import sample_cases
    from recdemo.llm.explain import Explainer
    from recdemo.llm.stack import Stack
    from recdemo.storage import write_json_atomically

    torch.set_num_threads(args.threads)
    cfg = Config.from_env()
    stack = Stack.from_config(cfg, dataset_name=args.dataset)
    data, service, retriever = stack.dataset, stack.service, stack.retriever
    model_name = service.describe()
    if args.int8:
        quantize_int8(service.llm, args.int8)
        model_name += f", linear layers int8 (dynamic, per {args.int8})"
    explainer = Explainer(service, data, retriever, stack.text_index, max_new_tokens=cfg.llm.explain_new_tokens,
                          facts=cfg.llm.explain_facts)
    cases = sample_cases(data, "test", args.users)[: args.limit]
    rows, started = [], time.perf_counter()
    out_path = RESULTS / f"explanations-{args.dataset}-{args.label}.raw.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    for at in range(0, len(cases), args.batch_users):
        rows += explain_batch(explainer, retriever, cases[at:at + args.batch_users], stack.profiles, args.profile)
        print(f"{len(rows)} users, {time.perf_counter() - started:.0f} s", flush=True)
        # saved after every batch: a run stopped early still holds its users (the report compares
        # runs on the users they share)
        write_json_atomically(out_path, {
            "dataset": args.dataset, "label": args.label, "users": len(rows), "model": model_name,
            "threads": args.threads, "explain_max_new_tokens": explainer.max_new_tokens,
            "batch_users": args.batch_users, "seconds": round(time.perf_counter() - started, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2), "command": "python " + " ".join(sys.argv), "rows": rows},
            separators=(",", ":"))
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
    measured = [r["tokens"] for r in run["rows"] if r.get("tokens")]
    tokens = {k: round(float(np.mean([t[k] for t in measured if k in t])), 1)
              for k in dict.fromkeys(k for t in measured for k in t)}
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
            "keywords_non_category_grounded_share": share(kw_grounded_non_category, kw_total),
            "tokens_per_user_mean": tokens}


def report() -> None:
    from recdemo.config import Config
    from recdemo.data import load_from_config

    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("explanations-*.raw.json"))]
    common = {}  # per dataset: the users every run of it explained (runs of different lengths compare fairly)
    for run in runs:
        users = {r["user"] for r in run["rows"]}
        common[run["dataset"]] = common.get(run["dataset"], users) & users
    datasets, out, shared = {}, [], []
    for run in runs:
        if run["dataset"] not in datasets:
            cfg = Config.from_env().set("data", "dataset", run["dataset"])
            datasets[run["dataset"]] = load_from_config(cfg.data)
        out.append(score_run(run, datasets[run["dataset"]]))
        rows = [r for r in run["rows"] if r["user"] in common[run["dataset"]]]
        shared.append(score_run({**run, "rows": rows, "users": len(rows)}, datasets[run["dataset"]]))
    out = sorted(out + stored_only(runs), key=lambda r: (r["dataset"], r["label"]))
    (RESULTS / "explanations.json").write_text(json.dumps({"all_users": out, "shared_users": shared}, indent=1))
    lines = ["# Explanations: claim checks and profile keywords", "",
             "Generated by `bench/explanations.py` (commands below); every run rescored by today's checks "
             "(`python bench/explanations.py --report`). Labels: `before`: the code two sessions back (title-only "
             "check, 16 new tokens); `start`: this session's starting point (facts in the prompt, 32 new tokens); "
             "`after`: the 2026-12-05 explanation branch (worked example, constant prompt prefix, stricter checks, "
             "repairs); `final`: the same after the fix for double quotes inside titles (amazon-beauty only); "
             "`merged`: main after that branch met the new decoder and the batching of concurrent calls "
             "(both datasets); `s11`: the model primed with the item only (the evidence titles written before its "
             "part), the strongest fact last; `q8c-40`: s11's code with the model's linear layers in int8 (`--int8 "
             "channel`, 2026-12-06), the first 40 users; `s12`: s11 with the profile's franchise keywords (the whole "
             "name two history titles start with, not one shared word); `s13`: s12 with one evidence line per explanation "
             "prompt (`LLMConfig.explain_facts`; two before), the sentence's lead naming that title only, and titles "
             "of 9-10 words kept whole (longer ones cut to 8 words without a dangling last word); `s14`: s13 with the "
             "`unbacked` check (a word nothing in the data backs, such as \"superhero\" or a plot, fails) and its repair "
             "(such a word is dropped from what the item is, else the template); `s15`: s14 where what the item is may "
             "not borrow another title's words (\"a Harry Potter thriller\") and no word may be missing after an article, "
             "the borrowed words dropped also from a trimmed clause. Today's checks fail, in the runs "
             "before s13, the titles cut inside their name (\"The Lord of the Rings: The Return of\") and the unbacked "
             "words: by them 38.6% of amazon-beauty s11's shown sentences fail, 3.9% of movielens s12's. Runs whose raw file is not on the machine that wrote this report "
             "keep the scores they were last given (all but the runs named in the shared-users table). "
             "Held-out users (test case), SASRec's top 10, SmolLM2-135M on a shared 2-core CPU (busy: quality "
             "figures, not timings).", "",
             "Shares are of the LLM's sentences as written (before any fallback or repair) and of the "
             "sentences shown. Keywords: share of the profile's keywords that are not only genre/category names "
             "(amazon-beauty has no categories, so every keyword counts); in brackets, those also grounded.", "",
             "## Each run on all its users", ""] + table(out) + [
             "", "## Runs of one dataset on the users they all share", ""] + table(shared)
    lines += ["", "Tokens per user (means; measured by tokenizing the run's prompts and outputs): the 10 "
              "explanation rows' prompt tokens, the prefix all 10 share, what a shared-prefix decoder prefills "
              "(each common start once + each row's rest; runs before s7: the prefix all 10 share, once; from "
              "s7 on: each group of rows with a common start as `decode.prefix_groups` groups them, since "
              "rows with and without a count start with different worked examples), tokens generated (all "
              "rows; the longest row), the profile's prompt and answer.", "",
              "| dataset | run | explain prompt | shared prefix | prefill, shared once | generated | longest row "
              "| profile prompt | profile answer |", "|---|---|---|---|---|---|---|---|---|"]
    keys = ("prompt", "shared_prefix", "prefill_shared_once", "generated", "generated_max_row", "profile_prompt",
            "profile_answer")
    for r in out:
        if r["tokens_per_user_mean"]:
            lines.append(f"| {r['dataset']} | {r['label']} | "
                         + " | ".join(str(r["tokens_per_user_mean"].get(k, "-")) for k in keys) + " |")
    lines += ["", "Commands:", ""] + [f"- {r['dataset']} {r['label']}: `{r['command']}` ({r['seconds']} s, "
                                      f"{r['explain_max_new_tokens']} new tokens)" for r in out]
    (RESULTS / "explanations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def stored_only(runs: list[dict]) -> list[dict]:
    """The scores explanations.json holds for runs whose raw file is not here (raw files hold dataset text,
    so they are not committed): a fresh checkout's report keeps every earlier run's row, as last scored."""
    path = RESULTS / "explanations.json"
    here = {(run["dataset"], run["label"]) for run in runs}
    stored = json.loads(path.read_text())["all_users"] if path.exists() else []
    return [r for r in stored if (r["dataset"], r["label"]) not in here]


def table(scored: list[dict]) -> list[str]:
    from recdemo.llm.claims import CHECKS

    checks = list(CHECKS)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = ["| dataset | run | users | LLM sentences failing (before fallback): " + " / ".join(checks)
             + " / any | LLM share of shown | shown failing | keywords not a genre/category (grounded) |",
             "|---|---|---|---|---|---|---|"]
    for r in scored:
        fails = " / ".join(pct(r["llm_failed"].get(c)) for c in checks)  # a check newer than a stored run: "-"
        lines.append(f"| {r['dataset']} | {r['label']} | {r['users']} | {fails} / {pct(r['llm_failed_any'])} "
                     f"| {pct(r['shown_llm_share'])} | {pct(r['shown_failed'])} "
                     f"| {pct(r['keywords_non_category_share'])} ({pct(r['keywords_non_category_grounded_share'])}) |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--limit", type=int, default=None,
                    help="stop after the first N of the --users drawn (the same users as a longer run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-users", type=int, default=4,
                    help="users whose explanations share one batched model call (10 rows each)")
    ap.add_argument("--label", default="after", help="names the run: before (main's code) or after")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--int8", choices=("channel", "tensor"), default=None,
                    help="run the model's linear layers in int8 (dynamic quantization, weight scales per channel or tensor)")
    ap.add_argument("--report", action="store_true", help="only rescore the stored runs and write the tables")
    args = ap.parse_args()
    if args.report:
        report()
    else:
        generate(args)


if __name__ == "__main__":
    main()
