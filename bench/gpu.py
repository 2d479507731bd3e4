"""LLaMA-7B on a GPU: every figure of issue 16's table, through the project's own code paths.

    python bench/gpu.py --out bench/results/       # on a CUDA GPU: LLaMA-7B shape, random bf16 weights
    python bench/gpu.py --eval-data data --out bench/results/   # ... with amazon-beauty's real test users
    python bench/gpu.py --tiny                     # CPU smoke run: 2-layer tiny LLaMA, float32, < 60 s

On this workplace's device machine (no network; torch, transformers 5.17, peft, accelerate; no faiss,
gradio or sentence-transformers): carry git-ignored copies of the data folder (``data/``), the wheels
of transformers 5.23.0, peft 0.21.2, tokenizers 0.23.3 (``.whl/``) and the SmolLM2 tokenizer files,
then one command (~5-8 min estimated, not measured; docs/notes/gpu.md):

    pip install --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site \
      RECDEMO_DATA_DIR=data PYTHONUNBUFFERED=1 python3 bench/gpu.py --eval-data data --out $OUT

A ``LlamaForCausalLM`` with the LLaMA-7B shape (random weights: speed and memory do not depend on
their values) is wrapped in ``recdemo.llm.models.LLM`` + ``LLMService`` and driven by the project:
- ``score`` rerank of 50 candidates (rankers/score.py): p50/p90 per user at batch 1, and users
  batched through ``recdemo.llm.batch_score`` (B prompts in one call, B candidate tries in one more);
- ``palr`` constrained generation of 10 titles (rankers/palr.py);
- profile generation (``llm.profile.ProfileGenerator``), generated tokens/s;
- 10 explanations for one user (``llm.explain.Explainer``: evidence, the generate call, claim checks);
- batched evaluation (``eval/rerank_eval.evaluate_rerank`` with ``batch_size``, as ``evaluate --stage
  rerank --batch-size``) of amazon-beauty's 22,332 test users (``--eval-data``; else a synthetic
  dataset of its size): ``--eval-users`` timed and projected to all, or all of them (``--eval-users 0``);
- ``--concurrent`` threads calling ``Recommender.recommend`` at once (the public API: profile, rerank,
  explanations): p50/p95 of the complete answer;
- LoRA training tokens/s at sequence lengths 512 and 1024, r=8 on q_proj/v_proj and on all-linear:
  the model from ``finetune/lora.trainable_base`` + ``add_lora``, micro-batches from ``finetune/token_loss.collate``,
  and run_finetune's step (``finetune/token_loss.answer_token_loss`` -> backward -> clip -> AdamW); sequences are
  real fine-tuning examples (``ExampleBuilder``) with their prompt trimmed to exactly the length;
- real ``run_finetune`` runs on the served model's shared base (``share_base="share"``, the app's
  default on CUDA), q_proj,v_proj and all-linear: tokens/s and padding share; then the first again
  while a thread serves score requests from the same model: its peak memory is "serving and
  fine-tuning at once".
Every figure stands next to its arithmetic limit, max(FLOPs / measured matmul FLOP/s, weight bytes /
measured copy bandwidth) for inference, FLOPs / matmul FLOP/s for training (FLOPs and bytes of the
calls actually made, see gpu_setup.CallLog and Cost); ratio = limit / measured time; and next to
issue 16's target (``TARGETS``; judged on GPU runs only).
Peak memory (GB = 1e9 bytes, torch.cuda.max_memory_allocated) is CUDA-only (None on CPU).
Writes bench/results/gpu-<device>.json and .md (the table).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_setup import (LLAMA_7B, ROOT, TINY, CallLog, Cost, Dev, build_model, candidate_source,  # noqa: E402
                       copy_bandwidth, eval_dataset, hash_text_index, load_catalog, load_tokenizer, matmul_rate)

SECTIONS = ("rankers", "profile", "explain", "eval", "concurrent", "lora", "finetune", "together")

# Issue 16's targets for one H200 and the LLaMA-7B shape: (figure, key in the results (see lookup), "<=" or ">=", target)
TARGETS = [
    ("score rerank p50 (ms)", ("score", "p50_ms"), "<=", 30.0),
    ("score rerank p90 (ms)", ("score", "p90_ms"), "<=", 40.0),
    ("score batched, per user at batch 16 (ms)", ("score_batch16", "per_user_ms"), "<=", 10.0),
    ("palr constrained top-10 p50 (ms)", ("palr", "p50_ms"), "<=", 150.0),
    ("profile generation (tokens/s)", ("profile", "tokens_per_s"), ">=", 150.0),
    ("10 explanations for one user p50 (ms)", ("explain", "p50_ms"), "<=", 300.0),
    ("run_finetune q_proj,v_proj (share of the matmul limit)", ("finetune_qv", "ratio"), ">=", 0.40),
    ("run_finetune all-linear (share of the matmul limit)", ("finetune_all", "ratio"), ">=", 0.35),
    ("serving and fine-tuning at once, peak (GB)", ("memory", "together_gb"), "<=", 32.0),
    ("evaluation of all amazon-beauty test users (minutes)", ("eval", "minutes_all_users"), "<=", 10.0),
    ("16 concurrent users, complete answer p95 (ms)", ("concurrent", "p95_ms"), "<=", 1500.0),
]


def pct(values, q) -> float:
    return float(np.percentile(values, q))


def pick_users(dataset, n: int, seed: int, min_history: int = 20) -> list[list[int]]:
    """Test-split histories with at least ``min_history`` items (prompts at PALR's full 20 items; any
    history when the dataset has none that long: ``--tiny``)."""
    from recdemo.eval.core import sample_cases

    cases = sample_cases(dataset, "test", n, seed, min_history) or sample_cases(dataset, "test", n, seed)
    return [[int(x) for x in c.history] for c in cases]


def make_request(dataset, source, history, k=10, n=50):
    from recdemo.llm.profile import heuristic_profile
    from recdemo.records import Candidate, RerankRequest
    cands = [Candidate(i, s, r) for r, (i, s) in enumerate(source.top_k(history, n), 1)]
    return RerankRequest(history=history, candidates=cands, profile=heuristic_profile(dataset.catalog, history), k=k)


def priced(ctx, seconds: list[float], flops: list[float], nbytes: list[float]) -> dict:
    """p50/p90 next to the limit of the median call: max(FLOPs / matmul rate, bytes / bandwidth)."""
    limit = [max(f / ctx.rate, b / ctx.bandwidth) for f, b in zip(flops, nbytes)]
    return {"p50_ms": 1e3 * pct(seconds, 50), "p90_ms": 1e3 * pct(seconds, 90), "n": len(seconds),
            "limit_ms": 1e3 * pct(limit, 50), "flop_limit_ms": 1e3 * pct(flops, 50) / ctx.rate,
            "bandwidth_limit_ms": 1e3 * pct(nbytes, 50) / ctx.bandwidth,
            "ratio": float(np.median(np.array(limit) / np.array(seconds)))}


def run_timed(ctx, fn, items, warmup: int = 1):
    """fn(item) for every item (the first ``warmup`` calls not counted): seconds, FLOPs, bytes, results."""
    log = CallLog(ctx.llm.model)
    out = {"s": [], "flops": [], "bytes": [], "results": []}
    try:
        for j, item in enumerate(items):
            log.reset()
            result, seconds = ctx.dev.timed(lambda: fn(item))
            if j >= warmup:
                out["s"].append(seconds)
                out["flops"].append(log.flops(ctx.cost))
                out["bytes"].append(log.weight_bytes(ctx.cost))
                out["results"].append(result)
    finally:
        log.close()
    return out


def bench_rankers(ctx, users) -> dict:
    from recdemo.llm.batch_score import rank_batch
    reqs = [make_request(ctx.dataset, ctx.source, h) for h in users]
    res = {}
    for name in ("score", "palr"):
        ranker = ctx.stack.ranker(name, retriever=ctx.source, adapter=None, fusion_dir=ctx.tmp)
        m = run_timed(ctx, lambda req: (ranker.rank(req), dict(ranker.last_info))[1], reqs[:1] + reqs)
        infos = m["results"]
        res[name] = {**priced(ctx, m["s"], m["flops"], m["bytes"]), "candidates": 50, "k": 10,
                     "prompt_tokens": float(np.mean([i["prompt_tokens"] for i in infos])),
                     "answer_tokens": float(np.mean([i.get("tree_tokens", i.get("generated_tokens", 0))
                                                     for i in infos])),
                     "forwards": float(np.mean([i["forwards"] for i in infos]))}
    score = ctx.stack.ranker("score", retriever=ctx.source, adapter=None, fusion_dir=ctx.tmp)
    res["score_batched"] = []
    for b in ctx.args.batch_sizes:
        groups = [reqs[i:i + b] for i in range(0, len(reqs) - b + 1, b)] or [(reqs * b)[:b]]
        m = run_timed(ctx, lambda g: rank_batch(score, g), groups[:1] + groups)
        p = priced(ctx, m["s"], m["flops"], m["bytes"])
        res["score_batched"].append({"batch": b, "batches": len(m["s"]), "batch_p50_ms": p["p50_ms"],
                                     "batch_p90_ms": p["p90_ms"], "per_user_ms": p["p50_ms"] / b,
                                     "users_per_s": 1e3 * b / p["p50_ms"], "limit_ms": p["limit_ms"],
                                     "ratio": p["ratio"]})
    return res


def bench_profile(ctx, users) -> dict:
    from recdemo.llm.profile import ProfileGenerator
    log_tokens = []

    def one(history):
        gen = ProfileGenerator(ctx.service, ctx.dataset.catalog)  # fresh: no cached profile
        return gen.generate(history)

    log = CallLog(ctx.llm.model)  # generated tokens = output-projection calls (one per new token)
    seconds, flops, nbytes = [], [], []
    try:
        for j, h in enumerate(users[:1] + users):
            log.reset()
            _, s = ctx.dev.timed(lambda: one(h))
            if j:
                seconds.append(s)
                log_tokens.append(log.head_calls)
                flops.append(log.flops(ctx.cost))
                nbytes.append(log.weight_bytes(ctx.cost))
    finally:
        log.close()
    p = priced(ctx, seconds, flops, nbytes)
    tok_s = sum(log_tokens) / sum(seconds)
    limit_tok_s = sum(log_tokens) / sum(max(f / ctx.rate, b / ctx.bandwidth) for f, b in zip(flops, nbytes))
    return {**p, "generated_tokens": float(np.mean(log_tokens)), "tokens_per_s": tok_s,
            "limit_tokens_per_s": limit_tok_s, "ratio": tok_s / limit_tok_s}


def training_sequences(ctx, seq: int, n: int, rounds: int = 50) -> list[dict]:
    """``n`` real fine-tuning examples (recommend / recommend_retrieval: prompt, then the answer titles,
    the only labelled tokens) of exactly ``seq`` tokens: built with up to 200 history items (with
    genres) so that they are long enough, then their prompt trimmed from the start to the length."""
    from recdemo.finetune.examples import ExampleBuilder
    builder = ExampleBuilder(ctx.dataset, ctx.llm.tokenizer, None, max_history=200, with_attributes=True)
    out = []
    for seed in range(rounds):
        for e in builder.encode_all(builder.training_examples(["recommend", "recommend_retrieval"], 16, seed),
                                    1 << 20)[0]:
            cut = len(e["input_ids"]) - seq
            if cut >= 0 and e["labels"][cut] == -100:  # long enough, and the whole answer stays
                out.append({"input_ids": e["input_ids"][cut:], "labels": e["labels"][cut:]})
        if len(out) >= n:
            return out[:n]
    raise ValueError(f"only {len(out)} training examples of {ctx.dataset.name} reach {seq} tokens; "
                     "use shorter --seq-lens")


def bench_lora(ctx, targets: str, seq: int) -> dict:
    from recdemo.finetune.loop import FineTuneSpec
    from recdemo.finetune.token_loss import answer_token_loss, collate
    from recdemo.finetune.lora import add_lora, make_accelerator, trainable_base

    a = ctx.args
    spec = FineTuneSpec(lora_r=8, lora_targets=targets, micro_batch_size=a.micro_batch, out="(bench: never saved)")
    data = training_sequences(ctx, seq, 2 * a.micro_batch)
    pad = ctx.llm.tokenizer.pad_token_id
    ctx.dev.reset_peak()
    torch.manual_seed(0)
    model = optimizer = params = accelerator = None
    try:
        model = add_lora(trainable_base(ctx.service, copy_base=False), spec)  # the served weights, shared
        if a.grad_checkpointing:  # (transformers also makes the embedding output require grad)
            model.gradient_checkpointing_enable()
        accelerator = make_accelerator(ctx.dev.device)
        params = [p for p in model.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        model, optimizer = accelerator.prepare(model, optimizer)
        model.train()

        def step(s: int) -> torch.Tensor:  # run_finetune's step, one micro-batch (batch_size = micro_batch_size)
            part = [data[(s * a.micro_batch + m) % len(data)] for m in range(a.micro_batch)]
            batch = collate(part, pad, ctx.dev.device)
            loss = answer_token_loss(model, batch)[0]  # logits for the answer positions only
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, spec.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        times, flops = [], []
        log = CallLog(accelerator.unwrap_model(model))  # positions the decoder and output projection ran on
        try:
            for s in range(a.train_steps + 2):  # 2 warm-up steps
                log.reset()
                seconds = ctx.dev.timed(lambda: step(s))[1]
                if s >= 2:
                    times.append(seconds)
                    flops.append(sum(ctx.cost.train_flops(rows, new, 0) for rows, new, _ in log.calls)
                                 + ctx.cost.train_flops(0, 0, log.head_rows))
        finally:
            log.close()
        peak = ctx.dev.peak_gb()  # weights + LoRA + its gradients and AdamW moments + activations
    finally:
        if hasattr(accelerator, "free_memory"):
            accelerator.free_memory()  # accelerate keeps references to what it prepared
        del optimizer, model, params, accelerator
        trainable_base(ctx.service, copy_base=False)  # strips the LoRA layers from the served model again
        if a.grad_checkpointing:
            ctx.llm.model.gradient_checkpointing_disable()
            ctx.llm.model.disable_input_require_grads()
        ctx.llm.model.eval()
        ctx.dev.reset_peak()
    tokens = a.micro_batch * seq
    step_s, step_flops = float(np.median(times)), float(np.median(flops))
    return {"targets": targets, "r": 8, "seq": seq, "micro_batch": a.micro_batch, "steps": len(times),
            "step_ms": 1e3 * step_s, "tokens_per_s": tokens / step_s, "flops_per_token": step_flops / tokens,
            "limit_tokens_per_s": tokens * ctx.rate / step_flops, "ratio": step_flops / step_s / ctx.rate,
            "peak_gb": peak, "trainable_params": n_trainable, "grad_checkpointing": bool(a.grad_checkpointing)}


def bench_explain(ctx, users) -> dict:
    """10 explanations for one user through the project's Explainer (evidence, one batched generate,
    claim checks), the user's top-10 candidates as the items."""
    from recdemo.llm.explain import Explainer
    explainer = Explainer(ctx.service, ctx.dataset, retriever=ctx.retriever, text_index=ctx.text_index)
    items = {tuple(h): [i for i, _ in ctx.source.top_k(h, 10)] for h in users}
    m = run_timed(ctx, lambda h: explainer.explain(h, items[tuple(h)]), users[:1] + users)
    written = [sum(e.rationale_source == "llm" for e in r) for r in m["results"]]
    return {**priced(ctx, m["s"], m["flops"], m["bytes"]), "explanations": 10,
            "llm_sentences_kept": float(np.mean(written)), "prompts": len(explainer.last_prompts)}


class Serving:
    """A thread sending score-ranker requests back to back (each under the service lock, as the app
    does) until ``stop()``: the app serving while a fine-tune trains."""

    def __init__(self, ctx, users):
        self.ranker = ctx.stack.ranker("score", retriever=ctx.source, adapter=None, fusion_dir=ctx.tmp)
        self.reqs = [make_request(ctx.dataset, ctx.source, h) for h in users]
        self.seconds, self.errors, self._stop = [], [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        j = 0
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                self.ranker.rank(self.reqs[j % len(self.reqs)])
                self.seconds.append(time.perf_counter() - start)
            except Exception as e:  # noqa: BLE001 - reported, not fatal to the bench
                self.errors.append(f"{type(e).__name__}: {e}")
            j += 1

    def stop(self) -> dict:
        while not (self.seconds or self.errors) and self.thread.is_alive():  # at least one request answered
            time.sleep(0.01)
        self._stop.set()
        self.thread.join()
        s = self.seconds
        return {"requests": len(s), "errors": len(self.errors), "p50_ms": 1e3 * pct(s, 50) if s else None,
                "p95_ms": 1e3 * pct(s, 95) if s else None}


def bench_finetune(ctx, targets: str, users=None) -> dict:
    """A short real run_finetune with the LoRA on the served model's shared base (``share_base``; the
    app's default on CUDA). With ``users``: while a thread serves score requests from the same model,
    and its peak memory is the "serving and fine-tuning at once" figure."""
    from recdemo.finetune.loop import FineTuneSpec, run_finetune
    stamps = []
    out = Path(ctx.tmp) / "adapters" / ("gpu-bench-" + re.sub(r"\W", "-", targets) + ("-served" if users else ""))
    spec = FineTuneSpec(steps=ctx.args.finetune_steps, eval_users=0, rank_eval=False, eval_every=0, out=str(out),
                        resume=False, share_base="share", lora_targets=targets)
    ctx.dev.reset_peak()
    log = CallLog(ctx.llm.model) if users is None else None  # the training forwards (no serving mixed in)
    serving = Serving(ctx, users) if users else None
    try:
        result = run_finetune(spec, ctx.dataset, ctx.service, None,
                              progress=lambda e: e["phase"] == "training" and stamps.append(time.perf_counter()))
    finally:
        served = serving.stop() if serving else None
        if log is not None:
            log.close()
    peak = ctx.dev.peak_gb()
    ctx.service.unload_adapter(out.name)  # registered by run_finetune: the served model stays bare
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
    meta = json.loads((out / "meta.json").read_text())
    row = {"status": result["status"], "steps": result["steps"], "batch_size": spec.batch_size,
           "micro_batch_size": spec.micro_batch_size or (1 if ctx.dev.device.type == "cpu" else 4),
           "max_length": spec.max_length, "lora_targets": targets, "share_base": "share",
           "tokens_per_s": result["tokens_per_s"], "padding_share": result["padding_share"],
           "steady_step_ms": 1e3 * steady if steady else None, "train_seconds": meta.get("train_seconds"),
           "peak_gb": peak, "served": served}
    if log is not None and log.calls and meta.get("train_seconds"):
        # FLOPs of the real tokens: the padded forwards' FLOPs less the padding's share of them
        flops = (sum(ctx.cost.train_flops(rows, new, 0) for rows, new, _ in log.calls)
                 + ctx.cost.train_flops(0, 0, log.head_rows)) * (1 - result["padding_share"])
        tokens = result["tokens_per_s"] * meta["train_seconds"]
        row["limit_tokens_per_s"] = tokens * ctx.rate / flops
        row["ratio"] = result["tokens_per_s"] / row["limit_tokens_per_s"]
    return row


def bench_eval(ctx) -> dict:
    """``evaluate --stage rerank --batch-size B`` (eval/rerank_eval.py -> eval/core's batched scoring) of
    the score ranker on amazon-beauty's test users (or a synthetic dataset of its size): ``--eval-users``
    of them timed after one warm-up batch, projected to all (all of them when --eval-users 0)."""
    from recdemo.eval.rerank_eval import evaluate_rerank
    from recdemo.llm.stack import Stack
    a = ctx.args
    dataset, source_name = eval_dataset(a.eval_data, a.tiny)
    source, candidates = candidate_source(dataset, ctx.cfg)
    ranker = Stack(ctx.cfg, dataset=dataset, service=ctx.service).ranker("score", retriever=source, adapter=None,
                                                                         fusion_dir=ctx.tmp)
    total = len(dataset.eval_cases("test"))
    n = min(a.eval_users or total, total)
    evaluate_rerank(ranker, dataset, source, users=a.eval_batch, seed=1, batch_size=a.eval_batch)  # warm-up
    out, seconds = ctx.dev.timed(lambda: evaluate_rerank(ranker, dataset, source, users=n, seed=0,
                                                         batch_size=a.eval_batch))
    minutes = seconds / n * total / 60
    return {"dataset": source_name, "items": dataset.n_items, "test_users": total, "users": n,
            "batch_size": a.eval_batch, "candidates": candidates, "seconds": seconds, "per_user_ms": 1e3 * seconds / n,
            "minutes_all_users": minutes, "measured_all": n == total, "ndcg@10": out.get("ndcg@10")}


def bench_concurrent(ctx, users) -> dict:
    """``n`` threads calling ``Recommender.recommend`` at once (profile, score rerank, 10 explanations:
    the complete answer), ``--concurrent-rounds`` requests each; p50/p95 of a request's wall time."""
    from recdemo.pipeline.recommender import Recommender
    a = ctx.args
    rec = Recommender(ctx.dataset, replace(ctx.cfg, llm=ctx.service.cfg), service=ctx.service, retriever=ctx.source,
                      text_index=ctx.text_index)
    titles = [[ctx.dataset.catalog.titles[i] for i in h[-20:]] for h in users]
    ask = lambda j: rec.recommend(titles[j % len(titles)], ranker="score", adapter="none")  # noqa: E731
    ask(0)  # warm-up (lazy parts, first shapes)
    barrier, seconds, errors = threading.Barrier(a.concurrent), [], []

    def client(c: int) -> None:
        barrier.wait()
        for r in range(a.concurrent_rounds):
            start = time.perf_counter()
            try:
                ask(c * a.concurrent_rounds + r)
                seconds.append(time.perf_counter() - start)
            except Exception as e:  # noqa: BLE001 - counted; the other clients go on
                errors.append(f"{type(e).__name__}: {str(e)[:200]}")
    threads = [threading.Thread(target=client, args=(c,)) for c in range(a.concurrent)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"users": a.concurrent, "rounds": a.concurrent_rounds, "requests": len(seconds), "errors": len(errors),
            "first_error": errors[0] if errors else None, "p50_ms": 1e3 * pct(seconds, 50) if seconds else None,
            "p95_ms": 1e3 * pct(seconds, 95) if seconds else None, "requests_per_s": len(seconds) / wall}


def guarded(results: dict, section: str, fn):
    """fn(), or None with the error noted in results["errors"] (e.g. CUDA out of memory for one LoRA
    setting): the other figures are still measured and written."""
    try:
        return fn()
    except (RuntimeError, ValueError) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        results.setdefault("errors", {})[section] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        print(f"warning: {section} failed: {results['errors'][section]}", file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, 2-layer tiny LLaMA, float32 (checks the script)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for gpu-<device>.json/.md")
    ap.add_argument("--users", type=int, default=None, help="users per latency figure (20; tiny 3)")
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    ap.add_argument("--seq-lens", type=lambda s: [int(x) for x in s.split(",")], default=None)
    ap.add_argument("--lora-targets", nargs="+", default=["q_proj,v_proj", "all-linear"])
    ap.add_argument("--micro-batch", type=int, default=None, help="sequences per training step (4; tiny 2)")
    ap.add_argument("--train-steps", type=int, default=None, help="timed steps after 2 warm-up steps (8; tiny 2)")
    ap.add_argument("--finetune-steps", type=int, default=None, help="run_finetune steps, 0 = skip (10; tiny 2)")
    ap.add_argument("--finetune-targets", nargs="+", default=["q_proj,v_proj", "all-linear"],
                    help="LoRA targets of the run_finetune throughput runs (the first also trains while serving)")
    ap.add_argument("--eval-data", default=None, help="data folder holding amazon-beauty (carried to the GPU "
                    "machine, git-ignored) for the batched evaluation; default: a synthetic dataset of its size")
    ap.add_argument("--eval-users", type=int, default=None, help="test users timed, projected to all; 0 = all "
                    "of them (1024; tiny 8)")
    ap.add_argument("--eval-batch", type=int, default=None, help="users per batched score call (16; tiny 4)")
    ap.add_argument("--concurrent", type=int, default=None, help="threads calling Recommender.recommend at once "
                    "(16; tiny 2)")
    ap.add_argument("--concurrent-rounds", type=int, default=None, help="requests per thread (1)")
    ap.add_argument("--grad-checkpointing", action="store_true", help="LoRA runs with activation recomputation")
    ap.add_argument("--synthetic", action="store_true", help="generated catalog even when movielens-small is there")
    ap.add_argument("--tokenizer", default=None, help="folder with tokenizer.json (default: cached SmolLM2)")
    ap.add_argument("--skip", default="", help="comma list of: " + ",".join(SECTIONS))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (4; tiny 1: on a busy "
                    "2-core machine a second thread slows small ops down many times)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="model dtype (bfloat16; tiny float32; --tiny --dtype bfloat16 checks the bf16 path on CPU)")
    args = ap.parse_args(argv)
    defaults = dict(users=(3, 20), batch_sizes=([2], [4, 16]), seq_lens=([64, 128], [512, 1024]),
                    micro_batch=(2, 4), train_steps=(2, 8), finetune_steps=(2, 10), threads=(1, 4),
                    eval_users=(8, 1024), eval_batch=(4, 16), concurrent=(2, 16), concurrent_rounds=(1, 1))
    for key, (small, big) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if args.tiny else big)
    return args


def setup(args, tmp: str):
    """(ctx, results header): device, tokenizer, catalog, candidates, the model in an LLMService
    (adapters and fusion weights under ``tmp``), measured matmul rate and bandwidth."""
    from recdemo.config import Config
    from recdemo.llm.models import LLM, select_sdpa_backends
    from recdemo.llm.service import LLMService
    from recdemo.llm.stack import Stack

    tiny = args.tiny
    torch.set_num_threads(args.threads)
    if not tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: bench/gpu.py measures a LLaMA-7B-shaped model on a GPU. "
                         "Run `python bench/gpu.py --tiny` to check the script on the CPU.")
    cfg = Config.from_env()
    dev = Dev(torch.device("cpu" if tiny else "cuda"))
    sdpa = select_sdpa_backends(dev.device)  # the attention kernels the project's loader selects
    dtype = getattr(torch, args.dtype or ("float32" if tiny else "bfloat16"))
    tok, tok_source = load_tokenizer(args.tokenizer, cfg.llm.cache_dir)
    dataset, catalog_source = load_catalog(cfg, args.synthetic)
    source, source_name = candidate_source(dataset, cfg)
    start = time.perf_counter()
    model = build_model(TINY if tiny else LLAMA_7B, tok, dev.device, dtype, args.seed)
    dev.sync()
    build_s = time.perf_counter() - start
    name = "tiny-llama-random" if tiny else "llama-7b-shape-random"
    llm = LLM(model=model, tokenizer=tok, name=name, device=dev.device, dtype=dtype)
    service = LLMService(replace(cfg.llm, adapter_dir=str(Path(tmp) / "adapters"),
                                 fusion_dir=str(Path(tmp) / "fusion")), llm=llm)
    stack = Stack(cfg, dataset=dataset, service=service)  # the project's one builder of rankers
    ctx = SimpleNamespace(args=args, cfg=cfg, dev=dev, llm=llm, service=service, stack=stack, dataset=dataset,
                          source=source, retriever=source if source_name == "sasrec" else None, tmp=tmp,
                          text_index=hash_text_index(dataset, Path(tmp) / "text_index"), cost=Cost(model, dtype),
                          weights_gb=dev.allocated_gb())
    dname = str(dtype).replace("torch.", "")
    ctx.rate = matmul_rate(dev, dtype, 1024 if tiny else 8192)
    ctx.bandwidth = copy_bandwidth(dev, (64 if tiny else 1024) * 2**20)
    results = {"date": date.today().isoformat(), "device": dev.name(), "mode": "tiny-cpu" if tiny else "llama-7b",
               "gpu_figures": not tiny, "torch": torch.__version__, "cuda": torch.version.cuda, "sdpa_backends": sdpa,
               "model": {"name": name, "shape": TINY if tiny else LLAMA_7B, "vocab": model.config.vocab_size,
                         "dtype": dname, "attn": model.config._attn_implementation, "build_s": build_s,
                         **ctx.cost.describe()},
               "tokenizer": {"source": tok_source, "size": len(tok),
                             "note": "SmolLM2 tokenizer (no LLaMA tokenizer offline): model vocab = "
                                     f"max(32000, {len(tok)}); prompts in the instruction frame (no chat template)"},
               "catalog": {"source": catalog_source, "items": dataset.n_items}, "candidates": source_name,
               "text_index": "hashed character trigrams (no sentence-transformers on the GPU machine)",
               "rates": {"matmul_flops": ctx.rate, "matmul": f"{1024 if tiny else 8192}^3 {dname}",
                         "copy_bytes_per_s": ctx.bandwidth},
               "formulas": {
                   "inference_flops": "sum over decoder calls of rows*new*(2*N_dec + 4*L*d*(past + (new+1)/2)) "
                                      "+ 2*N_head per output-projection row",
                   "inference_bytes": "calls * N_dec * bytes/param (+ N_head * bytes/param per output-projection "
                                      "call)",
                   "inference_limit": "max(FLOPs / matmul_flops, bytes / copy_bytes_per_s); ratio = limit / measured",
                   "train_flops": "per step: rows*S*(4*N_dec + 6*L*d*(S+1)) + 4*N_head*(positions given logits: "
                                  "the answer's only, token_loss.answer_token_loss); LoRA: no weight gradients for "
                                  "frozen weights; ratio = step FLOPs / step time / matmul_flops"}}
    return ctx, results


def main(argv=None) -> dict:
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--skip: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    with tempfile.TemporaryDirectory() as tmp:
        ctx, results = setup(args, tmp)
        run = lambda name, fn, key=None: None if name in skip else guarded(results, key or name, fn)  # noqa: E731
        dev = ctx.dev
        users = pick_users(ctx.dataset, args.users, args.seed)
        dev.reset_peak()
        results.update(run("rankers", lambda: bench_rankers(ctx, users)) or {})
        results["profile"] = run("profile", lambda: bench_profile(ctx, users))
        results["explain"] = run("explain", lambda: bench_explain(ctx, users))
        results["eval"] = run("eval", lambda: bench_eval(ctx))
        results["concurrent"] = run("concurrent", lambda: bench_concurrent(ctx, users))
        mem = {"weights_gb": ctx.weights_gb, "inference_peak_gb": dev.peak_gb(),
               "inference_peak_reserved_gb": dev.peak_reserved_gb()}
        if "lora" not in skip:
            results["lora"] = [x for t in args.lora_targets for s in args.seq_lens
                               if (x := guarded(results, f"lora {t} {s}", lambda: bench_lora(ctx, t, s)))]
        if args.finetune_steps > 0:
            results["finetune"] = [x for t in args.finetune_targets
                                   if (x := run("finetune", lambda: bench_finetune(ctx, t), f"finetune {t}"))]
            results["together"] = run("together", lambda: bench_finetune(ctx, args.finetune_targets[0], users))
    for key in ("profile", "explain", "eval", "concurrent", "finetune", "together"):  # skipped or failed: left out
        if not results.get(key):
            results.pop(key, None)
    together = results.get("together") or {}
    mem["together_gb"] = together.get("peak_gb")  # the app serving while a fine-tune trains on its base
    results["memory"] = mem
    results["targets"] = check_targets(results)
    write(results, Path(args.out))
    return results


def lookup(r: dict, key: tuple):
    """The figure at ``key`` in the results: a section's field, or one row of a list section
    ("score_batch16": the batch-16 row; "finetune_qv" / "finetune_all": the q_proj,v_proj / all-linear run)."""
    section, field = key
    rows = {"score_batch16": ("score_batched", "batch", 16), "finetune_qv": ("finetune", "lora_targets", "q_proj,v_proj"),
            "finetune_all": ("finetune", "lora_targets", "all-linear")}
    if section in rows:
        name, col, want = rows[section]
        found = [x for x in r.get(name) or [] if x.get(col) == want]
        return found[0].get(field) if found else None
    return (r.get(section) or {}).get(field)


def check_targets(r: dict) -> dict:
    """Issue 16's targets: {figure: {"value", "op", "target", "met"}}; met is None when not measured or
    not a GPU run (tiny CPU figures are never judged against GPU targets)."""
    out = {}
    for figure, key, op, target in TARGETS:
        value = lookup(r, key)
        met = None
        if r["gpu_figures"] and value is not None:
            met = value <= target if op == "<=" else value >= target
        out[figure] = {"value": value, "op": op, "target": target, "met": met}
    return out


def fmt(x, unit="", digits=1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}{unit}"


def target_cell(r: dict, figure: str) -> str:
    t = r["targets"][figure]
    verdict = {True: "met", False: "NOT met", None: "not judged"}[t["met"]]
    unit = re.search(r"\(([^)]*)\)$", figure).group(1)
    unit = {"ms": " ms", "GB": " GB", "minutes": " min", "tokens/s": " tok/s"}.get(unit, " of the limit")
    return f"{t['op']} {t['target']:g}{unit} ({verdict})"


def rows(r: dict) -> list[tuple]:
    """(figure, measured, arithmetic limit, ratio, target figure or None) per line of the table."""
    out = []
    if "score" in r:
        s, p = r["score"], r["palr"]
        out.append((f"score rerank, 50 candidates, batch 1 (prompt {s['prompt_tokens']:.0f} tok + "
                    f"{s['answer_tokens']:.0f} tree tok) p50 / p90", f"{fmt(s['p50_ms'], ' ms')} / "
                    f"{fmt(s['p90_ms'], ' ms')}", fmt(s['limit_ms'], ' ms', 2), s['ratio'], "score rerank p50 (ms)"))
        for b in r["score_batched"]:
            out.append((f"score rerank, {b['batch']} users batched: per user (batch p50)",
                        f"{fmt(b['per_user_ms'], ' ms')} ({fmt(b['batch_p50_ms'], ' ms')})",
                        fmt(b['limit_ms'] / b['batch'], ' ms', 2), b['ratio'],
                        "score batched, per user at batch 16 (ms)" if b["batch"] == 16 else None))
        out.append((f"palr constrained top-10 (prompt {p['prompt_tokens']:.0f} tok, {p['forwards']:.0f} calls) p50 / p90",
                    f"{fmt(p['p50_ms'], ' ms')} / {fmt(p['p90_ms'], ' ms')}", fmt(p['limit_ms'], ' ms', 2), p['ratio'],
                    "palr constrained top-10 p50 (ms)"))
    if "profile" in r:
        p = r["profile"]
        out.append((f"profile generation ({p['generated_tokens']:.0f} tokens) p50; tokens/s",
                    f"{fmt(p['p50_ms'], ' ms')}; {fmt(p['tokens_per_s'], ' tok/s')}",
                    fmt(p['limit_tokens_per_s'], ' tok/s'), p['ratio'], "profile generation (tokens/s)"))
    if "explain" in r:
        e = r["explain"]
        out.append((f"10 explanations for one user (Explainer, {e['llm_sentences_kept']:.1f} LLM sentences kept) "
                    "p50 / p90", f"{fmt(e['p50_ms'], ' ms')} / {fmt(e['p90_ms'], ' ms')}", fmt(e['limit_ms'], ' ms', 2),
                    e['ratio'], "10 explanations for one user p50 (ms)"))
    for x in r.get("lora", []):
        out.append((f"LoRA r=8 {x['targets']}, {x['micro_batch']} x {x['seq']} tokens: training tokens/s "
                    f"(peak {fmt(x['peak_gb'], ' GB')})", fmt(x['tokens_per_s'], ' tok/s', 0),
                    fmt(x['limit_tokens_per_s'], ' tok/s', 0), x['ratio'], None))
    for f in r.get("finetune", []):
        qv = f["lora_targets"] == "q_proj,v_proj"
        out.append((f"run_finetune, shared base, {f['steps']} steps x {f['batch_size']}, {f['lora_targets']} "
                    f"(padding {100 * f['padding_share']:.0f}%, peak {fmt(f['peak_gb'], ' GB')}): tokens/s",
                    fmt(f['tokens_per_s'], ' tok/s', 0), fmt(f.get('limit_tokens_per_s'), ' tok/s', 0),
                    f.get("ratio"), "run_finetune q_proj,v_proj (share of the matmul limit)" if qv else
                    "run_finetune all-linear (share of the matmul limit)" if f["lora_targets"] == "all-linear" else None))
    if "together" in r:
        t, s = r["together"], r["together"]["served"] or {}
        out.append((f"serving and fine-tuning at once ({t['lora_targets']}, shared base; {s.get('requests', 0)} score "
                    f"requests served meanwhile, p50 {fmt(s.get('p50_ms'), ' ms')}): peak memory",
                    fmt(r["memory"]["together_gb"], " GB"), "", None, "serving and fine-tuning at once, peak (GB)"))
    if "eval" in r:
        e = r["eval"]
        how = "all measured" if e["measured_all"] else f"{e['users']:,} measured, projected"
        out.append((f"evaluate --batch-size {e['batch_size']}: {e['test_users']:,} {e['dataset']} test users ({how})",
                    f"{fmt(e['minutes_all_users'], ' min', 2)} ({fmt(e['per_user_ms'], ' ms')}/user)", "", None,
                    "evaluation of all amazon-beauty test users (minutes)"))
    if "concurrent" in r:
        c = r["concurrent"]
        out.append((f"{c['users']} concurrent users x {c['rounds']} (Recommender.recommend: profile, score, 10 "
                    f"explanations; {c['errors']} errors) p50 / p95", f"{fmt(c['p50_ms'], ' ms')} / "
                    f"{fmt(c['p95_ms'], ' ms')}", "", None, "16 concurrent users, complete answer p95 (ms)"))
    return out


def table(r: dict) -> str:
    gb = lambda x: fmt(x, " GB")  # noqa: E731
    lines = [f"### {'TINY CPU SMOKE RUN (not GPU figures): ' if not r['gpu_figures'] else ''}"
             f"{r['model']['name']} ({r['model']['params'] / 1e9:.2f} B params, {r['model']['dtype']}, "
             f"{r['model']['attn']}) on {r['device']}, {r['date']}",
             "", f"matmul {r['rates']['matmul']}: {r['rates']['matmul_flops'] / 1e12:.1f} TFLOP/s; copy "
             f"{r['rates']['copy_bytes_per_s'] / 1e9:.0f} GB/s; catalog {r['catalog']['source']}, "
             f"candidates {r['candidates']}", "",
             "| figure | measured | arithmetic limit | ratio | target (issue 16) |", "|---|---|---|---|---|"]
    for figure, measured, limit, ratio, target in rows(r):
        lines.append(f"| {figure} | {measured} | {limit} | {'' if ratio is None else f'{ratio:.2f}'} | "
                     f"{target_cell(r, target) if target else ''} |")
    m = r["memory"]
    lines += ["", f"Memory: weights {gb(m['weights_gb'])}, inference peak {gb(m['inference_peak_gb'])}, "
              f"serving + fine-tuning at once {gb(m['together_gb'])}."]
    missing = [f for f, t in r["targets"].items() if t["value"] is None]
    if missing:
        lines.append("Not measured: " + "; ".join(missing) + ".")
    return "\n".join(lines)


def write(r: dict, out: Path) -> None:
    slug = "tiny-cpu" if not r["gpu_figures"] else re.sub(r"[^a-z0-9]+", "-", r["device"].lower()).strip("-")
    out.mkdir(parents=True, exist_ok=True)
    text = table(r)
    print(text)
    (out / f"gpu-{slug}.json").write_text(json.dumps(r, indent=1))
    (out / f"gpu-{slug}.md").write_text(text + "\n")
    print(f"wrote {out / f'gpu-{slug}.json'} and .md")


if __name__ == "__main__":
    main()
