"""Fine-tuning cost on CPU: prompt lengths per task, and a small real run's speed.

    python bench/finetune.py                                 # movielens-small, 64 examples
    python bench/finetune.py --dataset amazon-beauty --examples 32 --micro-batch-size 2
    python bench/finetune.py --micro-batch-size 4 --no-length-buckets   # before/after of length buckets

Measures (reported, never asserted):
- tokens per training example, per task (prompt + answer, heuristic profile, history without
  attributes as in training), over 400 examples;
- a real `run_finetune` of --examples examples (steps = examples / batch size) on SmolLM2-135M:
  wall time, training tokens/s (forward + backward, all tokens of the batch), seconds per step,
  and the time of the before/after validation (--eval-users users);
- padding share: padded positions / all positions the training forwards ran on (a count, the
  same on any machine): with --micro-batch-size > 1 each micro-batch pads to its longest example;
  length buckets (the default) put similar lengths together, --no-length-buckets keeps the sampled
  order (the "before" of issue 16). micro-batch 1 (the CPU default) never pads.
Prints a table and writes bench/results/finetune[-<dataset>].json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import recdemo  # noqa: E402,F401  (sets OpenMP defaults before torch loads: config.OPENMP_DEFAULTS)
import torch  # noqa: E402


def token_lengths(builder, tasks, n=400) -> dict:
    enc, dropped = builder.encode_all(builder.training_examples(tasks, n, seed=0), 100_000)
    out = {}
    for task in tasks:
        lengths = [len(e["input_ids"]) for e in enc if e["task"] == task]
        answers = [sum(x != -100 for x in e["labels"]) for e in enc if e["task"] == task]
        out[task] = {"mean": float(np.mean(lengths)), "p95": float(np.percentile(lengths, 95)),
                     "max": int(max(lengths)), "answer_mean": float(np.mean(answers))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--tasks", default="recommend,recommend_retrieval")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--micro-batch-size", type=int, default=1)
    ap.add_argument("--no-length-buckets", action="store_true", help="micro-batches in sampled order (more padding)")
    ap.add_argument("--eval-users", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-retriever", action="store_true")
    ap.add_argument("--out", default=None, help="JSON file (default: bench/results/finetune[-<dataset>][-no-buckets].json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import threading
    from types import SimpleNamespace

    from recdemo.config import Config
    from recdemo.finetune.examples import ExampleBuilder
    from recdemo.finetune.tasks import TASKS
    from recdemo.finetune.loop import FineTuneSpec, run_finetune
    from recdemo.llm.stack import Stack, load_training_llm

    cfg = Config.from_env()
    stack = Stack.from_config(cfg, dataset_name=args.dataset, train_retriever=False, retriever_text_fallback=False)
    ds = stack.dataset
    retriever = None
    if not args.no_retriever:  # the bench runs without SASRec too
        retriever = stack.optional_retriever(
            lambda e: print(f"note: no SASRec checkpoint ({e}); negatives from attributes/popularity"))
    llm = load_training_llm(cfg.llm)
    lengths = token_lengths(ExampleBuilder(ds, llm.tokenizer, retriever), list(TASKS))

    tasks = args.tasks.split(",")
    steps = max(1, args.examples // args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        spec = FineTuneSpec(tasks=tasks, steps=steps, examples=args.examples, batch_size=args.batch_size,
                            micro_batch_size=args.micro_batch_size, eval_users=args.eval_users,
                            eval_every=0, out=f"{tmp}/bench", resume=False, share_base="share",
                            length_buckets=not args.no_length_buckets)
        phases = {}
        last = {"phase": None, "t": time.perf_counter()}

        def progress(event):
            now = time.perf_counter()
            phases[last["phase"]] = phases.get(last["phase"], 0.0) + now - last["t"]
            last.update(phase=event["phase"], t=now)

        start = time.perf_counter()
        service = SimpleNamespace(llm=llm, lock=threading.RLock())
        result = run_finetune(spec, ds, service, retriever, progress=progress)
        wall = time.perf_counter() - start
    eval_s = phases.get("evaluating the base model", 0) + phases.get("evaluating the fine-tuned model", 0)
    report = {"dataset": ds.name, "model": llm.describe(), "threads": args.threads, "tasks": tasks,
              "examples": args.examples, "steps": steps, "batch_size": args.batch_size,
              "micro_batch_size": args.micro_batch_size, "length_buckets": not args.no_length_buckets,
              "padding_share": result["padding_share"], "padded_positions": result["padded_positions"],
              "positions": result["positions"], "retriever": retriever is not None,
              "wall_s": round(wall, 1), "train_s": round(phases.get("training", 0.0), 1),
              "s_per_step": round(phases.get("training", 0.0) / steps, 2),
              "train_tokens_per_s": result["tokens_per_s"], "eval_s": round(eval_s, 1),
              "eval_users": args.eval_users, "tokens_per_example": lengths,
              "metrics_before": result["metrics_before"], "metrics_after": result["metrics_after"]}
    print(f"\n{'task':<22}{'tokens mean':>12}{'p95':>8}{'max':>8}{'answer':>8}")
    for task, v in lengths.items():
        print(f"{task:<22}{v['mean']:>12.0f}{v['p95']:>8.0f}{v['max']:>8}{v['answer_mean']:>8.1f}")
    print(f"\n{'run':<28}{'value':>12}")
    for key in ("examples", "steps", "micro_batch_size", "length_buckets", "wall_s", "train_s", "s_per_step",
                "train_tokens_per_s", "padding_share", "eval_s"):
        print(f"{key:<28}{report[key]:>12}")
    name = "finetune" + ("" if ds.name == "movielens-small" else f"-{ds.name}") + (
        "-no-buckets" if args.no_length_buckets else "")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
