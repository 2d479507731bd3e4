"""`python -m recdemo evaluate`: retrieval metrics here; `--stage rerank` goes to rerank_eval."""
from __future__ import annotations

import json
from pathlib import Path

from .retrieval_eval import N_SAMPLED_NEGATIVES, PROTOCOLS, evaluate_models

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
        from .rerank_eval import cli_rerank
        return cli_rerank(args, cfg)

    from ..data import load_from_config
    from ..retrieval.baselines import ItemKNN, Popularity
    from ..retrieval.retriever import Retriever

    dataset = load_from_config(cfg.data)
    retriever = Retriever.for_dataset(dataset, cfg.retrieval, train_if_missing=True)
    models = {
        "sasrec": retriever.score_batch,
        "popularity": Popularity.for_dataset(dataset).score_batch,
        "item_knn": ItemKNN.for_dataset(dataset).score_batch,
    }
    split, protocol, seed = args.split, args.protocol, args.seed
    protocols = [protocol]
    other = "sampled100" if protocol == "full" else "full"
    if other != "sampled100" or can_sample(dataset, split):
        protocols.append(other)  # the other protocol as an extra column
    result = evaluate_models(models, dataset, split=split, users=args.users, seed=seed, protocols=protocols)
    users = result[protocol]["sasrec"]["users"]
    print(f"{dataset.name} ({dataset.content_hash}), {split} split, {users} users, leave-one-out; "
          f"{protocol} protocol" + (" (every item ranked, history excluded)" if protocol == "full" else ""))
    print(format_table(result, protocol))

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
        "protocols": result,
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        print(f"wrote {path}")
    return 0
