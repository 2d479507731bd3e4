"""`python -m recdemo evaluate`: `--stage retrieval` (SASRec and baselines) or `--stage rerank` (an LLM ranker)."""
from __future__ import annotations

import sys

from recdemo.eval.core import can_batch
from recdemo.eval.rerank_eval import evaluate_rerank
from recdemo.eval.retrieval_eval import N_SAMPLED_NEGATIVES, PROTOCOLS, evaluate_models
from recdemo.llm.fusion_store import weight_key
from recdemo.llm.stack import Stack
from recdemo.retrieval.baselines import ItemKNN, Popularity
from recdemo.storage import write_json_atomically

COLUMNS = ("ndcg@10", "hr@10", "ndcg@5", "hr@5", "ndcg@20", "hr@20", "mrr")
MODEL_LABELS = {"sasrec": "SASRec", "popularity": "most popular", "item_knn": "item-kNN (last 20)"}


def format_table(result: dict, headline: str) -> str:
    """One row per model: the headline protocol's metrics, plus NDCG@10/HR@10 under the other one."""
    other = [p for p in PROTOCOLS if p != headline and p in result]
    head = f"{'model':<20}" + "".join(f"{c.upper():>9}" for c in COLUMNS)
    head += "".join(f"{p + ' NDCG@10':>20}{p + ' HR@10':>18}" for p in other)
    lines = [head, "-" * len(head)]
    for name, metrics in result[headline].items():
        row = f"{MODEL_LABELS.get(name, name):<20}" + "".join(f"{metrics[c]:>9.4f}" for c in COLUMNS)
        row += "".join(f"{result[p][name]['ndcg@10']:>20.4f}{result[p][name]['hr@10']:>18.4f}" for p in other)
        lines.append(row)
    return "\n".join(lines)


def can_sample(dataset, split: str) -> bool:
    """Whether every case leaves 100 items outside its history to sample negatives from."""
    longest = max((len(set(c.history.tolist())) + 1 for c in dataset.eval_cases(split)), default=0)
    return dataset.n_items - longest >= N_SAMPLED_NEGATIVES


def cli_evaluate(args, cfg) -> int:
    if getattr(args, "stage", "retrieval") == "rerank":
        return cli_rerank(args, cfg)

    # evaluation histories are SASRec's own training data: no text-similarity fallback to load
    stack = Stack.from_config(cfg, retriever_text_fallback=False)
    dataset, retriever = stack.dataset, stack.retriever
    models = {
        "sasrec": retriever.score_batch,
        "popularity": Popularity.for_dataset(dataset).score_batch,
        "item_knn": ItemKNN.for_dataset(dataset).score_batch,
    }
    split, protocol, seed = args.split, args.protocol, args.seed
    protocols = [p for p in ("full", "unmasked", "sampled100")
                 if p == protocol or p != "sampled100" or can_sample(dataset, split)]
    protocols = list(dict.fromkeys(protocols))  # the headline's other protocols are extra columns
    result = evaluate_models(models, dataset, split=split, users=args.users, seed=seed, protocols=protocols)
    users = result[protocol]["sasrec"]["users"]
    print(f"{dataset.name} ({dataset.content_hash}), {split} split, {users} users, leave-one-out; "
          f"{protocol} protocol" + (" (every item ranked, history excluded)" if protocol == "full" else ""))
    print(format_table(result, protocol))
    print("unmasked: every item ranked with the user's earlier items left in (published numbers differ on this)")

    out = {
        **{k: v for k, v in result[protocol]["sasrec"].items() if k != "seconds"},
        "model": "sasrec",
        "dataset": dataset.name,
        "dataset_hash": dataset.content_hash,
        "split": split,
        "protocol": protocol,
        "seed": seed,
        "users_requested": args.users,
        "checkpoint": {k: retriever.meta.get(k) for k in ("dataset_hash", "model", "created")},
        "baselines": {name: result[protocol][name] for name in models if name != "sasrec"},
        "unmasked": result["unmasked"],
        "protocols": result,
    }
    if args.json:
        write_json(args.json, out)
    return 0


def write_json(path, data: dict) -> None:
    print(f"wrote {write_json_atomically(path, data)}")  # a killed run never leaves half a results file


def cli_rerank(args, cfg) -> int:
    stack = Stack.from_config(cfg, retriever_text_fallback=False)
    dataset, service = stack.dataset, stack.service
    name = cfg.llm.ranker  # --ranker is applied to the config
    adapter = service.resolve_adapter(cfg.llm.adapter, dataset.name, name)
    retriever = stack.retriever
    ranker = stack.ranker(name, retriever=retriever, adapter=adapter, fuse=not args.no_fuse)
    select = args.split == "valid" and not args.no_fuse
    weight = 1.0 if args.no_fuse else None
    batch_size = getattr(args, "batch_size", 1) or 1
    profile = getattr(args, "profile", "heuristic") or "heuristic"
    print(f"rerank evaluation: {dataset.name}, {args.split} split, ranker {name}, "
          f"model {service.describe()}, adapter {adapter or 'none (base model)'}, {profile} profile", file=sys.stderr)
    if batch_size > 1 and not can_batch(ranker):
        print(f"note: the {name} ranker does not batch users; --batch-size {batch_size} is ignored "
              "(one user per call)", file=sys.stderr)

    def progress(n, total):
        if n % 10 == 0 or n == total:
            print(f"  {n}/{total} users", file=sys.stderr)

    metrics = evaluate_rerank(ranker, dataset, retriever, split=args.split, users=args.users, seed=args.seed,
                              n_candidates=cfg.retrieval.n_candidates, k=cfg.llm.n_results, weight=weight,
                              select=select, progress=progress, batch_size=batch_size,
                              profile_fn=stack.profile_fn(profile))
    metrics.update(profile=profile, batch_size=batch_size if can_batch(ranker) else 1)
    if select:
        path = ranker.store.save(dataset.name, dataset.content_hash,
                                 weight_key(service.llm.name, adapter, name), metrics["fusion_weight"],
                                 method=metrics["fusion_method"], split="valid", users=metrics["users"], seed=args.seed,
                                 ndcg_by_weight=metrics["ndcg_by_weight"])
        metrics["fusion_saved_to"] = str(path)
    print(format_rerank_table(metrics))
    if args.json:
        write_json(args.json, metrics)
    return 0


def format_rerank_table(m: dict) -> str:
    k = m["k"]
    rows = [("", f"NDCG@{k}", f"HR@{k}"),
            (f"SASRec top-{k}", m[f"baseline_ndcg@{k}"], m[f"baseline_hr@{k}"]),
            (f"{m['ranker']} (LLM alone)", m[f"llm_only_ndcg@{k}"], m[f"llm_only_hr@{k}"]),
            (f"{m['ranker']} fused w={m['fusion_weight']:.1f}", m[f"ndcg@{k}"], m[f"hr@{k}"])]
    lines = [f"{a:<28}{b:>10}{c:>10}" if isinstance(b, str)
             else f"{a:<28}{b:>10.4f}{c:>10.4f}" for a, b, c in rows]
    extra = [f"users {m['users']} ({m['split']}), valid_ratio {m['valid_ratio']:.3f} "
             f"(LLM alone {m['llm_valid_ratio']:.3f}), "
             f"latency p50 {m['latency_ms_p50']:.0f} ms / p90 {m['latency_ms_p90']:.0f} ms, "
             f"candidate recall {m['candidate_recall']:.3f}"]
    if m.get("auc") is not None:
        extra.append(f"AUC (target vs other candidates): LLM {m['auc']:.3f}, SASRec {m['baseline_auc']:.3f}")
    if m.get("lift_ci95"):
        lo, hi = m["lift_ci95"]
        extra.append(f"lift {m['lift']:.3f} (95% paired bootstrap over users: {lo:.3f}-{hi:.3f}); "
                     f"NDCG@{k} 95% interval {m[f'ndcg@{k}_ci95'][0]:.4f}-{m[f'ndcg@{k}_ci95'][1]:.4f}")
    extra.append(f"fusion weight {m['fusion_weight']}, {m.get('fusion_method', 'rank')} normalisation "
                 f"({m['fusion_source']})")
    if m.get("gain_p_value") is not None:
        extra.append(f"best weight by NDCG {m['best_weight_by_ndcg']}: gain over SASRec has bootstrap "
                     f"p = {m['gain_p_value']:.3f} (kept only when < 0.05)")
    return "\n".join(lines + extra)
