"""LLaMA-7B on a GPU: latency, memory and LoRA throughput through the project's own code paths.

    python bench/gpu.py --out bench/results/       # on a CUDA GPU: LLaMA-7B shape, random bf16 weights
    python bench/gpu.py --tiny                     # CPU smoke run: 2-layer tiny LLaMA, float32, < 60 s

A ``LlamaForCausalLM`` with the LLaMA-7B shape (random weights: speed and memory do not depend on
their values) is wrapped in ``recdemo.llm.models.LLM`` + ``LLMService`` and driven by the project:
- ``score`` rerank of 50 candidates (rankers/score.py): p50/p90 per user at batch 1, and users
  batched through ``recdemo.llm.batch_score`` (B prompts in one call, B candidate tries in one more);
- ``palr`` constrained generation of 10 titles (rankers/palr.py);
- profile generation (``llm.profile.ProfileGenerator``), generated tokens/s;
- LoRA training tokens/s at sequence lengths 512 and 1024, r=8 on q_proj/v_proj and on all-linear:
  the model from ``finetune/lora.trainable_base`` + ``add_lora``, micro-batches from ``finetune/token_loss.collate``,
  and run_finetune's step (``finetune/token_loss.answer_token_loss`` -> backward -> clip -> AdamW); sequences are
  real fine-tuning examples (``ExampleBuilder``) with their prompt trimmed to exactly the length;
- one short real ``run_finetune`` (copy of the base, as the app trains while serving): its peak
  memory is the "inference + LoRA training together" figure.
Every figure stands next to its arithmetic limit, max(FLOPs / measured matmul FLOP/s, weight bytes /
measured copy bandwidth) for inference, FLOPs / matmul FLOP/s for training (FLOPs and bytes of the
calls actually made, see gpu_setup.CallLog and Cost); ratio = limit / measured time.
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
                       copy_bandwidth, load_catalog, load_tokenizer, matmul_rate)

TARGETS = {"score_p50_ms": 150.0, "lora_ratio": 0.40, "together_gb": 40.0}  # on one H100


def pct(values, q) -> float:
    return float(np.percentile(values, q))


def pick_users(dataset, n: int, seed: int, min_history: int = 20) -> list[list[int]]:
    """Test-split histories with at least ``min_history`` items (prompts at PALR's full 20 items)."""
    cases = [c for c in dataset.eval_cases("test") if len(c.history) >= min_history] or dataset.eval_cases("test")
    pick = np.random.default_rng(seed).choice(len(cases), size=min(n, len(cases)), replace=False)
    return [[int(x) for x in cases[i].history] for i in pick]


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


def bench_finetune(ctx) -> dict:
    """A short real run_finetune on a copy of the base (the app's default while it keeps serving)."""
    from recdemo.finetune.loop import FineTuneSpec, run_finetune
    stamps = []
    out = Path(ctx.tmp) / "adapters" / "gpu-bench"
    spec = FineTuneSpec(steps=ctx.args.finetune_steps, eval_users=0, rank_eval=False, eval_every=0,
                        out=str(out), resume=False, copy_base=True)
    service = SimpleNamespace(llm=ctx.llm, lock=threading.RLock())  # no register_adapter: the bench model stays bare
    ctx.dev.reset_peak()
    result = run_finetune(spec, ctx.dataset, service, None,
                          progress=lambda e: e["phase"] == "training" and stamps.append(time.perf_counter()))
    peak = ctx.dev.peak_gb()
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
    meta = json.loads((out / "meta.json").read_text())
    return {"status": result["status"], "steps": result["steps"], "batch_size": spec.batch_size,
            "micro_batch_size": spec.micro_batch_size or (1 if ctx.dev.device.type == "cpu" else 4),
            "max_length": spec.max_length, "lora_targets": spec.lora_targets,
            "tokens_per_s": result["tokens_per_s"], "steady_step_ms": 1e3 * steady if steady else None,
            "train_seconds": meta.get("train_seconds"), "peak_gb": peak, "copy_base": True}


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
    ap.add_argument("--grad-checkpointing", action="store_true", help="LoRA runs with activation recomputation")
    ap.add_argument("--synthetic", action="store_true", help="generated catalog even when movielens-small is there")
    ap.add_argument("--tokenizer", default=None, help="folder with tokenizer.json (default: cached SmolLM2)")
    ap.add_argument("--skip", default="", help="comma list of: rankers,profile,lora,finetune")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (4; tiny 1: on a busy "
                    "2-core machine a second thread slows small ops down many times)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="model dtype (bfloat16; tiny float32; --tiny --dtype bfloat16 checks the bf16 path on CPU)")
    args = ap.parse_args(argv)
    defaults = dict(users=(3, 20), batch_sizes=([2], [4, 16]), seq_lens=([64, 128], [512, 1024]),
                    micro_batch=(2, 4), train_steps=(2, 8), finetune_steps=(2, 10), threads=(1, 4))
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
    ctx = SimpleNamespace(args=args, dev=dev, llm=llm, service=service, stack=stack, dataset=dataset, source=source,
                          tmp=tmp, cost=Cost(model, dtype), weights_gb=dev.allocated_gb())
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
    with tempfile.TemporaryDirectory() as tmp:
        ctx, results = setup(args, tmp)
        dev = ctx.dev
        users = pick_users(ctx.dataset, args.users, args.seed)
        dev.reset_peak()
        if "rankers" not in skip:
            results.update(guarded(results, "rankers", lambda: bench_rankers(ctx, users)) or {})
        if "profile" not in skip:
            results["profile"] = guarded(results, "profile", lambda: bench_profile(ctx, users))
        mem = {"weights_gb": ctx.weights_gb, "inference_peak_gb": dev.peak_gb(),
               "inference_peak_reserved_gb": dev.peak_reserved_gb()}
        if "lora" not in skip:
            results["lora"] = [x for t in args.lora_targets for s in args.seq_lens
                               if (x := guarded(results, f"lora {t} {s}", lambda: bench_lora(ctx, t, s)))]
        if "finetune" not in skip and args.finetune_steps > 0:
            results["finetune"] = guarded(results, "finetune", lambda: bench_finetune(ctx))
    for key in ("profile", "finetune"):  # a section that failed is left out (see "errors")
        if results.get(key) is None:
            results.pop(key, None)
    ft = results.get("finetune", {})
    mem["together_gb"] = None
    if dev.cuda and ft.get("peak_gb") is not None and mem["inference_peak_gb"] is not None:
        # The app serving a request while a fine-tune trains on its copy of the base model.
        mem["together_gb"] = ft["peak_gb"] + (mem["inference_peak_gb"] - ctx.weights_gb)
    results["memory"] = mem
    results["targets"] = check_targets(results)
    write(results, Path(args.out))
    return results


def check_targets(r: dict) -> dict:
    """The issue's H100 targets; None when not measured (or not a GPU run: tiny figures mean nothing)."""
    if not r["gpu_figures"]:
        return {k: None for k in ("score_p50_ms<=150", "lora_ratio>=0.40", "together_gb<=40")}
    lora = [x["ratio"] for x in r.get("lora", [])]
    together = r["memory"]["together_gb"]
    return {"score_p50_ms<=150": r["score"]["p50_ms"] <= TARGETS["score_p50_ms"] if "score" in r else None,
            "lora_ratio>=0.40": max(lora) >= TARGETS["lora_ratio"] if lora else None,
            "together_gb<=40": together <= TARGETS["together_gb"] if together is not None else None}


def fmt(x, unit="", digits=1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}{unit}"


def table(r: dict) -> str:
    gb = lambda x: fmt(x, " GB")  # noqa: E731
    lines = [f"### {'TINY CPU SMOKE RUN (not GPU figures): ' if not r['gpu_figures'] else ''}"
             f"{r['model']['name']} ({r['model']['params'] / 1e9:.2f} B params, {r['model']['dtype']}, "
             f"{r['model']['attn']}) on {r['device']}, {r['date']}",
             "", f"matmul {r['rates']['matmul']}: {r['rates']['matmul_flops'] / 1e12:.1f} TFLOP/s; copy "
             f"{r['rates']['copy_bytes_per_s'] / 1e9:.0f} GB/s; catalog {r['catalog']['source']}, "
             f"candidates {r['candidates']}", "",
             "| figure | measured | arithmetic limit | ratio |", "|---|---|---|---|"]
    if "score" in r:
        s = r["score"]
        lines.append(f"| score rerank, 50 candidates, batch 1 (prompt {s['prompt_tokens']:.0f} tok + "
                     f"{s['answer_tokens']:.0f} tree tok) p50 / p90 | {fmt(s['p50_ms'], ' ms')} / "
                     f"{fmt(s['p90_ms'], ' ms')} | {fmt(s['limit_ms'], ' ms', 2)} | {s['ratio']:.2f} |")
        for b in r["score_batched"]:
            lines.append(f"| score rerank, {b['batch']} users batched: per user (batch p50) | "
                         f"{fmt(b['per_user_ms'], ' ms')} ({fmt(b['batch_p50_ms'], ' ms')}) | "
                         f"{fmt(b['limit_ms'] / b['batch'], ' ms', 2)} | {b['ratio']:.2f} |")
        p = r["palr"]
        lines.append(f"| palr constrained top-10 (prompt {p['prompt_tokens']:.0f} tok, {p['forwards']:.0f} calls) "
                     f"p50 / p90 | {fmt(p['p50_ms'], ' ms')} / {fmt(p['p90_ms'], ' ms')} | "
                     f"{fmt(p['limit_ms'], ' ms', 2)} | {p['ratio']:.2f} |")
    if "profile" in r:
        p = r["profile"]
        lines.append(f"| profile generation ({p['generated_tokens']:.0f} tokens) p50; tokens/s | "
                     f"{fmt(p['p50_ms'], ' ms')}; {fmt(p['tokens_per_s'], ' tok/s')} | "
                     f"{fmt(p['limit_tokens_per_s'], ' tok/s')} | {p['ratio']:.2f} |")
    for x in r.get("lora", []):
        lines.append(f"| LoRA r=8 {x['targets']}, {x['micro_batch']} x {x['seq']} tokens: training tokens/s "
                     f"(peak {gb(x['peak_gb'])}) | {fmt(x['tokens_per_s'], ' tok/s', 0)} | "
                     f"{fmt(x['limit_tokens_per_s'], ' tok/s', 0)} | {x['ratio']:.2f} |")
    if "finetune" in r:
        f = r["finetune"]
        lines.append(f"| run_finetune (copy of base, {f['steps']} steps x {f['batch_size']}, q_proj,v_proj): "
                     f"tokens/s (peak {gb(f['peak_gb'])}) | {fmt(f['tokens_per_s'], ' tok/s', 0)} | | |")
    m = r["memory"]
    lines += ["", f"Memory: weights {gb(m['weights_gb'])}, inference peak {gb(m['inference_peak_gb'])}, "
              f"inference + LoRA training together {gb(m['together_gb'])} (target <= 40 GB). "
              f"Targets met: {json.dumps(r['targets'])}"]
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
