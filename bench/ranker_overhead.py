"""Host work per ranker call (score, palr) on a tiny LLaMA, where the model's own compute is negligible:
CPU milliseconds, model calls, Tensor -> Python transfers (a device -> host sync each on a GPU) and
tokenizer calls, for this checkout and, with ``--baseline REV``, for the project at commit REV.

    python bench/ranker_overhead.py --baseline 042e07a          # before (042e07a) vs after (this checkout)
    python bench/ranker_overhead.py --tiny --tokenizer FOLDER   # a quick check (the test suite runs it)

The model is a random 2-layer LLaMA (bench/gpu_setup.TINY, float32, one CPU thread) under SmolLM2's
tokenizer (``--tokenizer`` for another folder); the catalog is synthetic (gpu_setup.synthetic_like), the
candidates the 50 most popular unseen items, k = 10. The first user warms up (the token cache fills with
the popular candidates' lines, as it does once in a served process); users 2..N are measured, one call
each. What is counted:

- ``cpu_ms``: ``time.process_time`` per call (CPU time of this process, so other processes' load changes
  it less than wall time; it is still a CPU-time figure on whatever machine ran it, not a GPU latency),
  the mean of the least disturbed of ``--reps`` passes (each pass a new ranker, so the same work);
- ``forwards``: calls of the decoder stack; ``syncs``: ``Tensor.tolist/item/cpu/numpy`` and
  ``float/int/bool(tensor)`` calls anywhere in the call (transformers' own included); ``tokenizer_calls``.

The baseline runs in a subprocess on ``git archive REV recdemo`` (this script and bench/gpu_setup.py
stay this checkout's), so both sides run the same measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SYNC_METHODS = ("tolist", "item", "cpu", "numpy", "__float__", "__int__", "__bool__")
RANKERS = ("score", "palr")


class Counters:
    """Counts forwards, Tensor -> Python transfers and tokenizer calls while ``active``."""

    def __init__(self, model, tokenizer):
        self.active = False
        self.counts = {"forwards": 0, "syncs": 0, "tokenizer_calls": 0}
        self._undo = []
        decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
        hook = decoder.register_forward_pre_hook(lambda *a: self._add("forwards"))
        self._undo.append(hook.remove)
        for name in SYNC_METHODS:
            self._wrap(torch.Tensor, name, "syncs")
        self._wrap(type(tokenizer), "__call__", "tokenizer_calls")

    def _add(self, key: str) -> None:
        if self.active:
            self.counts[key] += 1

    def _wrap(self, owner, name: str, key: str) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self._add(key)
            return original(*args, **kwargs)

        own = name in vars(owner)  # else inherited: undo by deleting the wrapper, not by pinning a copy
        setattr(owner, name, counted)
        self._undo.append(lambda: setattr(owner, name, original) if own else delattr(owner, name))

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()


def measure(args) -> dict:
    """Per ranker: mean CPU ms, forwards, syncs and tokenizer calls per call over the measured users."""
    from gpu_setup import TINY, PopularityCandidates, build_model, load_tokenizer, synthetic_like

    sys.path.insert(0, args.code)  # gpu_setup put this checkout first: the measured code goes before it
    from recdemo.llm.models import LLM
    from recdemo.llm.rankers import get_ranker
    from recdemo.records import Candidate, RerankRequest

    torch.set_num_threads(1)
    tok, _ = load_tokenizer(args.tokenizer, str(ROOT / ".cache" / "models"))
    model = build_model(TINY, tok, torch.device("cpu"), torch.float32, seed=0)
    llm = LLM(model=model, tokenizer=tok, name="tiny-llama-random", device=torch.device("cpu"), dtype=torch.float32)
    dataset = synthetic_like(n_items=args.items, n_users=args.users + 1, lengths=(8, 21), seed=0)
    source = PopularityCandidates(dataset)
    reqs = []
    for seq in dataset.sequences:
        history = [int(i) for i in seq]
        reqs.append(RerankRequest(history=history, profile=None, k=10, candidates=[
            Candidate(i, s, n) for n, (i, s) in enumerate(source.top_k(history, 50), 1)]))
    out = {"recdemo": str(Path(sys.modules["recdemo"].__file__).parent)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RANKERS:
            passes = [one_pass(get_ranker(name, llm, dataset, source, fusion_dir=tmp, fuse=False), reqs, model, tok)
                      for _ in range(args.reps)]
            cpu = [float(np.mean(p["cpu"])) for p in passes]
            rows = passes[0]["counts"]  # the same in every pass: each starts from a new ranker
            out[name] = {"cpu_ms": 1000 * min(cpu), "cpu_ms_passes": [round(1000 * c, 2) for c in cpu],
                         **{k: float(np.mean([r[k] for r in rows])) for k in rows[0]},
                         "prompt_tokens": passes[0]["prompt_tokens"], "calls": len(rows)}
    return out


def one_pass(ranker, reqs, model, tok) -> dict:
    """A new ranker (empty token cache) warmed up on the first request, then one call per other request."""
    counters = Counters(model, tok)
    try:
        ranker.score_list(reqs[0])
        cpu, rows = [], []
        for req in reqs[1:]:
            counters.counts = dict.fromkeys(counters.counts, 0)
            start = time.process_time()
            counters.active = True
            scored = ranker.score_list(req)
            counters.active = False
            cpu.append(time.process_time() - start)
            rows.append(dict(counters.counts))
    finally:
        counters.close()
    return {"cpu": cpu, "counts": rows, "prompt_tokens": float(scored.info.get("prompt_tokens", 0))}


def run_baseline(rev: str, argv: list[str]) -> dict:
    """``measure`` on the project at ``rev`` (its recdemo/ extracted to a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "recdemo"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        result = Path(tmp) / "result.json"
        subprocess.run([sys.executable, __file__, *argv, "--code", tmp, "--measure-only", str(result)],
                       check=True, env={**os.environ, "PYTHONPATH": tmp})
        return json.loads(result.read_text())


def table(report: dict) -> str:
    sides = [s for s in ("before", "after") if s in report]
    lines = ["| ranker | figure | " + " | ".join(f"{s} ({report[s + '_code']})" for s in sides) + " |",
             "|---|---|" + "---|" * len(sides)]
    for name in RANKERS:
        for key in ("cpu_ms", "forwards", "syncs", "tokenizer_calls"):
            lines.append(f"| {name} | {key} per call | " +
                         " | ".join(f"{report[s][name][key]:.1f}" for s in sides) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="a git revision to measure as 'before' (e.g. the branch point)")
    ap.add_argument("--tiny", action="store_true", help="3 measured users, 300 items (a quick check)")
    ap.add_argument("--users", type=int, default=None, help="measured users (default 20; tiny 3)")
    ap.add_argument("--items", type=int, default=None, help="catalog size (default 3000; tiny 300)")
    ap.add_argument("--reps", type=int, default=None, help="passes over the users, each with a new ranker; "
                    "cpu_ms is the least disturbed pass's mean (default 3; tiny 1)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the cached SmolLM2)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for ranker_overhead.json/.md")
    ap.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--measure-only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.users = args.users or (3 if args.tiny else 20)
    args.items = args.items or (300 if args.tiny else 3000)
    args.reps = args.reps or (1 if args.tiny else 3)
    sys.path[:0] = [args.code, str(Path(__file__).resolve().parent)]
    if args.measure_only:
        Path(args.measure_only).write_text(json.dumps(measure(args)))
        return
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "?"
    report = {"users": args.users, "items": args.items, "reps": args.reps, "threads": 1, "load_avg_before": os.getloadavg()[0],
              "after_code": f"{head} + working tree", "after": measure(args)}
    if args.baseline:
        argv = ["--users", str(args.users), "--items", str(args.items), "--reps", str(args.reps)] + \
            (["--tokenizer", args.tokenizer] if args.tokenizer else [])
        report["before_code"], report["before"] = args.baseline, run_baseline(args.baseline, argv)
    report["load_avg_after"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "ranker_overhead-tiny" if args.tiny else "ranker_overhead"
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    md = (f"# Ranker host overhead ({args.users} users, {args.items}-item synthetic catalog, tiny LLaMA, "
          f"1 CPU thread; load average {report['load_avg_before']:.2f} -> {report['load_avg_after']:.2f})\n\n"
          f"{table(report)}\n\nCPU ms = process CPU time per call, mean of the least disturbed of {args.reps} "
          "passes (not wall time, not a GPU figure); syncs = "
          "Tensor -> Python transfers (one device -> host sync each on a GPU).\n")
    (out / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
