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

    python bench/stages.py --compare lookup --users 12 --out bench/results
    python bench/stages.py --compare facts --users 12 --out bench/results

``--compare NAME`` times every user twice, once per arm of a setting (``COMPARISONS``), alternating
which goes first (this VM's speed drifts by 15-40% within minutes: only requests run side by side
compare), reports both tables, the decoder's counts of each (decode steps, prefilled tokens, accepted
drafts), and whether each user's final answer (every card's sentence) was the same; writes
stages-<dataset>-<ranker>-<NAME>.json. ``lookup``: the decoder's prompt-lookup drafts (``llm/lookup.py``,
as configured) against none (``--compare-lookup`` is the same). ``facts``: the explanation prompt's
configured evidence lines (``LLMConfig.explain_facts``) against two, the prompt before 2026-12-06.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

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
    ap.add_argument("--compare", choices=sorted(COMPARISONS),
                    help="each user under both arms of a setting, alternated (see the module doc)")
    ap.add_argument("--compare-lookup", dest="compare", action="store_const", const="lookup",
                    help="the same as --compare lookup")
    return ap.parse_args(argv)


def histories(rec, n: int, size: int, seed: int) -> list[list[str]]:
    """The newest ``size`` training items of ``n`` seeded held-out users, as titles."""
    from recdemo.eval.core import sample_cases

    cases = sample_cases(rec.dataset, "test", n + 1, seed)
    return [[rec.catalog.titles[int(i)] for i in c.history[-size:]] for c in cases]


def forget_caches(rec) -> None:
    """No answer may come from an earlier user's work (the issue asks for "no cache hit")."""
    rec.explainer.forget()  # the model's explanation sentences per prompt
    rec.profiles._cache.clear()  # profiles per (last 20 items, model, adapter)


def time_stages(rec, history: list[str], ranker: str, answers: list | None = None) -> list[tuple[str, float]]:
    """Seconds from the call to each state; the final state's (item, sentence) pairs go to ``answers``."""
    forget_caches(rec)
    t0 = time.perf_counter()
    run, state = [], None
    for state in rec.recommend_stages(history, ranker=ranker):
        run.append((state.stage, time.perf_counter() - t0))
    if answers is not None and state is not None:
        answers.append([(r["index"], r.get("rationale")) for r in state.results])
    return run


def lookup_arms(rec) -> dict[str, Callable[[], None]]:
    """The decoder's configured prompt-lookup drafts, and none (the first arm is the configured one)."""
    from recdemo.llm.lookup import Lookup

    decoder, configured = rec.service.decoder, rec.service.decoder.lookup
    return {"drafts": lambda: setattr(decoder, "lookup", configured),
            "plain": lambda: setattr(decoder, "lookup", Lookup())}


def facts_arms(rec) -> dict[str, Callable[[], None]]:
    """The explanation prompt's configured evidence lines, and two (or one, when two are configured)."""
    explainer = rec.explainer
    configured = explainer.facts
    other = 1 if configured == 2 else 2
    return {f"facts={configured}": lambda: setattr(explainer, "facts", configured),
            f"facts={other}": lambda: setattr(explainer, "facts", other)}


COMPARISONS = {"lookup": lookup_arms, "facts": facts_arms}


def compare(rec, hists: list[list[str]], ranker: str, arms: dict[str, Callable[[], None]]) -> dict:
    """Every history under each arm (a function that sets it up), the arm that goes first alternating:
    per arm the stage table and the decoder's counts, and how many answers matched. The first arm (the
    configured setting) is in force again at the end."""
    decoder, names = rec.service.decoder, list(arms)
    runs, answers, counts = {a: [] for a in arms}, {a: [] for a in arms}, {a: {} for a in arms}
    for i, history in enumerate(hists):
        for arm in (names if i % 2 == 0 else names[::-1]):
            arms[arm]()
            before = decoder.stats.as_dict()
            runs[arm].append(time_stages(rec, history, ranker, answers[arm]))
            for key, value in decoder.stats.as_dict().items():
                counts[arm][key] = counts[arm].get(key, 0) + value - before[key]
    arms[names[0]]()
    pairs = list(zip(*answers.values()))
    return {"same_answers": sum(a == b for a, b in pairs),
            "same_sentences": sum(x == y for a, b in pairs for x, y in zip(a, b)),
            "sentences": sum(len(a) for a, _ in pairs),
            "arms": {arm: {"stages_s": summarise(runs[arm]), "decoder": counts[arm],
                           "done_s_sum": round(sum(run[-1][1] for run in runs[arm]), 2),
                           "runs": rounded(runs[arm])}
                     for arm in arms}}


def rounded(runs: list[list[tuple[str, float]]]) -> list:
    """Runs as the JSON stores them: [stage, seconds to the ms] per state."""
    return [[[name, round(s, 3)] for name, s in run] for run in runs]


def print_table(stages_s: dict) -> None:
    print(f"{'stage reached':<26}{'p50 s':>8}{'p90 s':>8}")
    for name, v in stages_s.items():
        print(f"{name:<26}{v['p50']:>8.2f}{v['p90']:>8.2f}")


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
    result = {"dataset": args.dataset, "ranker": args.ranker, "users": args.users, "history_items": args.history,
              "threads": args.threads, "model": rec.service.describe(), "machine": describe_cpu()}
    if args.compare:
        if args.compare == "lookup":
            result["lookup"] = vars(rec.service.decoder.lookup).copy()
        result.update(compare(rec, hists[:args.users], args.ranker, COMPARISONS[args.compare](rec)))
    else:
        runs = [time_stages(rec, h, args.ranker) for h in hists[:args.users]]
        result.update(stages_s=summarise(runs), runs=rounded(runs))
    result.update(load_avg_start=load_start, load_avg_end=os.getloadavg(),
                  command="python bench/stages.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"{args.dataset}, {args.ranker} ranker, {args.users} users x {args.history} items, "
          f"{result['model']}, {result['machine']['cpu']} ({result['machine']['capability']}), "
          f"load {load_start[0]:.2f} -> {result['load_avg_end'][0]:.2f}")
    for arm, got in result.get("arms", {"": result}).items():
        if arm:
            steps = got["decoder"]
            print(f"{arm}: {steps['prefill_tokens']} tokens prefilled, {steps['decode_steps']} decode steps, "
                  f"{steps['accepted_tokens']} of {steps['new_tokens']} new tokens from accepted drafts; "
                  f"done in {got['done_s_sum']} s in all")
        print_table(got["stages_s"])
    if args.compare:
        print(f"same final answers: {result['same_answers']} of {args.users} "
              f"(cards: {result['same_sentences']} of {result['sentences']})")
    if args.out:
        suffix = f"-{args.compare}" if args.compare else ""
        path = Path(args.out) / f"stages-{args.dataset}-{args.ranker}{suffix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
