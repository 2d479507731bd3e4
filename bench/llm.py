"""LLM-side speed on this machine: loading, float32 vs bfloat16, profile, rerank per ranker, LoRA training.

    python bench/llm.py                               # everything, movielens-small, 5 users
    python bench/llm.py --only dtype,rerank --users 8 --threads 1
    python bench/llm.py --dtype bfloat16              # rerank/profile with bf16 instead of the config's dtype

Measures (reported, never asserted):
- load: cold (GGUF -> dequantize -> safetensors cache in a temp dir -> model) and warm (cached);
- dtype: float32 vs bfloat16 forward of a 400-token prompt and one cached decode step, per thread
  count (the faster one is what ``LLMConfig.dtype = "auto"`` should pick on this CPU);
- profile: ``ProfileGenerator.generate`` p50/p90 over --users histories;
- rerank: ``Ranker.rank`` (LLM + fusion) p50/p90 per ranker over --users users (one warm-up user
  first, not counted; genrec's one-time catalog trie build is reported on its own), with prompt
  token counts and forward calls; candidates from the SASRec checkpoint when present, else popularity;
  with --adapter (default: the dataset's shipped adapter for each ranker, if any) score and palr again with it active;
- train: LoRA (r=16 on all linear layers, as the shipped adapters; ``finetune/lora.add_lora``) forward +
  backward + AdamW step in float32 and in bfloat16, tokens/s, next to the arithmetic limit: measured matmul FLOP/s / FLOPs per training token
  (forward 2N + backward 2N for the activations' gradients of the N frozen weights + attention;
  LoRA's own weight gradients are negligible).
Load on this shared machine varies: the load average is recorded next to every number.
Prints a table and writes bench/results/llm.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import recdemo  # noqa: E402,F401  (sets OpenMP defaults before torch loads: config.OPENMP_DEFAULTS)
import torch  # noqa: E402


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def load_avg() -> float:
    return os.getloadavg()[0]


def bench_load(cfg) -> dict:
    from dataclasses import replace

    from recdemo.llm.models import load_llm
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        load_llm(replace(cfg.llm, cache_dir=tmp))
        cold = time.perf_counter() - start
    warm = [load_llm(cfg.llm).load_seconds for _ in range(2)]
    return {"cold_s": cold, "warm_s": min(warm), "load_avg": load_avg()}


def bench_dtype(model_path: str, threads: list[int], prompt_tokens: int = 400) -> dict:
    from transformers import AutoModelForCausalLM
    out = {}
    ids = torch.randint(100, 40000, (1, prompt_tokens))
    for dtype in ("float32", "bfloat16"):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        for n in threads:
            torch.set_num_threads(n)
            with torch.inference_mode():
                model(ids[:, :32])  # warm-up
                fwd = []
                for _ in range(3):
                    start = time.perf_counter()
                    cache = model(ids, use_cache=True).past_key_values
                    fwd.append(time.perf_counter() - start)
                step = []
                for _ in range(8):
                    start = time.perf_counter()
                    cache = model(torch.tensor([[500]]), past_key_values=cache, use_cache=True).past_key_values
                    step.append(time.perf_counter() - start)
            out[f"{dtype}/threads={n}"] = {"prompt_s": float(np.median(fwd)),
                                           "prompt_tok_per_s": prompt_tokens / float(np.median(fwd)),
                                           "decode_step_ms": 1000 * float(np.median(step)), "load_avg": load_avg()}
        del model
    return out


def candidates_source(stack):
    retriever = stack.optional_retriever(  # the bench runs without a SASRec checkpoint too
        lambda e: print(f"note: no SASRec checkpoint ({str(e)[:120]}); popularity candidates", file=sys.stderr))
    if retriever is not None:
        return retriever, "sasrec"
    dataset = stack.dataset
    counts = np.bincount(np.concatenate(dataset.train_sequences()), minlength=dataset.n_items)

    class Pop:
        def top_k(self, history, k=50):
            s = counts.astype(float)
            s[list(history)] = -1
            top = np.argsort(-s, kind="stable")[:k]
            return [(int(i), float(s[i])) for i in top]

        def score_all(self, history):
            return counts.astype(float)
    return Pop(), "popularity"


def bench_rerank(stack, retriever, users, rankers, adapter=None) -> dict:
    from recdemo.llm.profile import heuristic_profile
    from recdemo.records import Candidate, RerankRequest
    service, dataset = stack.service, stack.dataset
    out = {}
    for name in rankers:
        r = stack.ranker(name, retriever=retriever, adapter=adapter)
        extra = {}
        if name == "genrec":
            start = time.perf_counter()
            with service.lock:
                r.catalog_trie()
            extra["trie_build_s"] = time.perf_counter() - start
        times, infos = [], []
        for j, history in enumerate(users):
            cands = [Candidate(i, s, n) for n, (i, s) in enumerate(retriever.top_k(history, 50), 1)]
            req = RerankRequest(history=history, candidates=cands, profile=heuristic_profile(dataset.catalog, history))
            start = time.perf_counter()
            r.rank(req)
            if j:  # the first user warms up
                times.append(time.perf_counter() - start)
                infos.append(r.last_info)
        key = name if adapter is None else f"{name}+{adapter}"
        out[key] = {"p50_s": pct(times, 50), "p90_s": pct(times, 90), "users": len(times),
                    "prompt_tokens": float(np.mean([i.get("prompt_tokens", 0) for i in infos])),
                    "tree_or_generated_tokens": float(np.mean([i.get("tree_tokens", i.get("generated_tokens", 0))
                                                               for i in infos])),
                    "forwards": float(np.mean([i.get("forwards", 0) for i in infos])),
                    "load_avg": load_avg(), **extra}
    return out


def bench_profile(service, dataset, users) -> dict:
    from recdemo.llm.profile import ProfileGenerator
    gen = ProfileGenerator(service, dataset.catalog)
    times = []
    for j, history in enumerate(users):
        start = time.perf_counter()
        gen.generate(history)
        if j:
            times.append(time.perf_counter() - start)
    return {"p50_s": pct(times, 50), "p90_s": pct(times, 90), "users": len(times), "load_avg": load_avg()}


def matmul_flops(dtype=torch.float32, n: int = 1024) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def bench_train(llm, batch: int = 4, seq: int = 256, steps: int = 3) -> dict:
    from types import SimpleNamespace

    from recdemo.finetune.lora import add_lora
    spec = SimpleNamespace(lora_targets="all-linear", lora_r=16, lora_alpha=32, lora_dropout=0.0)
    model = add_lora(llm.model, spec)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(100, 40000, (batch, seq))
    times = []
    for s in range(steps + 1):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s:  # step 0 warms up
            times.append(time.perf_counter() - start)
    model.eval()
    cfg = llm.model.config
    n_params = sum(p.numel() for p in llm.model.parameters())  # tied embeddings counted once
    attn = 2 * 2 * cfg.num_hidden_layers * seq * cfg.hidden_size  # QK^T and AV per token, forward
    flops_per_token = 2 * (2 * n_params + attn)  # forward + backward (activation gradients only)
    peak = matmul_flops(llm.dtype)
    tok_s = batch * seq / float(np.median(times))
    return {"tokens_per_s": tok_s, "step_s": float(np.median(times)), "batch": batch, "seq": seq,
            "params": n_params, "flops_per_token": flops_per_token, "matmul_gflops": peak / 1e9,
            "dtype": str(llm.dtype).replace("torch.", ""),
            "arithmetic_limit_tokens_per_s": peak / flops_per_token, "efficiency": tok_s * flops_per_token / peak,
            "load_avg": load_avg()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--users", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default=None, help="dtype for profile/rerank (default: the config's)")
    ap.add_argument("--only", default="load,dtype,profile,rerank,train")
    ap.add_argument("--rankers", default="score,palr,tallrec,genrec")
    ap.add_argument("--adapter", default="auto", help="also time these rankers with this adapter ('none': skip)")
    ap.add_argument("--adapter-rankers", default="score,palr")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "llm.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))

    from dataclasses import replace

    from recdemo.config import Config
    from recdemo.eval.core import sample_cases
    from recdemo.llm.models import describe_cpu, load_llm, resolve_model_path
    from recdemo.llm.stack import Stack

    cfg = Config.from_env()
    if args.dtype:
        cfg = replace(cfg, llm=replace(cfg.llm, dtype=args.dtype))
    results: dict = {"machine": {**describe_cpu(), "threads": args.threads, "torch": torch.__version__},
                     "dataset": args.dataset, "command": "python " + " ".join(sys.argv),
                     "load_avg_at_start": load_avg()}
    if "load" in only:
        results["load"] = bench_load(cfg)
        torch.set_num_threads(args.threads)
    if "dtype" in only:
        results["dtype"] = bench_dtype(resolve_model_path(cfg.llm.model, cfg.llm.cache_dir),
                                       [1, 2])
        torch.set_num_threads(args.threads)
    stack = Stack.from_config(cfg, dataset_name=args.dataset, train_retriever=False, retriever_text_fallback=False)
    dataset, service = stack.dataset, stack.service
    users = [[int(x) for x in c.history] for c in sample_cases(dataset, "test", args.users + 1)]  # + a warm-up
    results["model"] = service.describe()
    if "profile" in only:
        results["profile"] = bench_profile(service, dataset, users)
    if "rerank" in only:
        retriever, source = candidates_source(stack)
        results["candidates"] = source
        results["rerank"] = bench_rerank(stack, retriever, users, args.rankers.split(","))
        for ranker in args.adapter_rankers.split(",") if args.adapter else []:
            # the same ranker with its LoRA adapter active (peft layers, not merged)
            name = service.resolve_adapter(args.adapter, dataset.name, ranker)
            if name:
                results["rerank"].update(bench_rerank(stack, retriever, users, [ranker], adapter=name))
    if "train" in only:
        results["train"] = {dt: bench_train(load_llm(replace(cfg.llm, dtype=dt))) for dt in ("float32", "bfloat16")}

    print_table(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def print_table(r: dict) -> None:
    print(f"model {r.get('model', '?')}, {r['machine']['threads']} threads, dataset {r['dataset']}")
    if "load" in r:
        print(f"load      cold (GGUF) {r['load']['cold_s']:.1f} s   warm {r['load']['warm_s']:.2f} s")
    for key, v in r.get("dtype", {}).items():
        print(f"dtype     {key:<22} 400-token prompt {v['prompt_s']:.2f} s ({v['prompt_tok_per_s']:.0f} tok/s)"
              f"   decode step {v['decode_step_ms']:.0f} ms   (load avg {v['load_avg']:.1f})")
    if "profile" in r:
        p = r["profile"]
        print(f"profile   p50 {p['p50_s']:.2f} s   p90 {p['p90_s']:.2f} s   ({p['users']} users)")
    for name, v in r.get("rerank", {}).items():
        extra = f"   trie build {v['trie_build_s']:.1f} s" if "trie_build_s" in v else ""
        print(f"rerank    {name:<22} p50 {v['p50_s']:.2f} s   p90 {v['p90_s']:.2f} s   "
              f"prompt {v['prompt_tokens']:.0f} tok"
              f"   +{v['tree_or_generated_tokens']:.0f} tok   {v['forwards']:.0f} forwards{extra}"
              f"   (load avg {v['load_avg']:.1f})")
    for dt, t in r.get("train", {}).items():
        print(f"train     LoRA {dt:<9} {t['tokens_per_s']:.0f} tok/s (batch {t['batch']}x{t['seq']}); limit "
              f"{t['arithmetic_limit_tokens_per_s']:.0f} tok/s = {t['matmul_gflops']:.0f} GFLOP/s / "
              f"{t['flops_per_token'] / 1e9:.2f} GFLOP per token; efficiency {100 * t['efficiency']:.0f}%")


if __name__ == "__main__":
    main()
