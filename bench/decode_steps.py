"""Decoder work of one demo request, counted (not timed): decoder calls, decode steps, rows per step.

    python bench/decode_steps.py                       # movielens-small, score ranker, 3 users
    python bench/decode_steps.py --users 6 --ranker palr

For each of --users real users (the last 5 items of their training history), ``Recommender.recommend``
runs as the demo runs it (shipped adapter, "auto"), with the profile and explanation caches cleared
(no cache hit; one warm-up request is not counted). ``llm/decode.DecodeStats`` counts what the decoder
did for that request: ``calls`` (decoder calls: the profile's two passes and the explanations' call
before issue 17's merge, the merged call and the summary after it), ``decode_steps`` (forward passes
after prefill: what a CPU pays per step whatever the batch), ``decode_rows`` (rows over all steps),
``prefill_tokens`` (pads included) and ``new_tokens``. The score ranker's rerank does not go through the
decoder (``batch_score``). Prints each user's counts and the mean. Nothing is timed or asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import recdemo  # noqa: E402,F401  (sets OpenMP defaults before torch loads: config.OPENMP_DEFAULTS)
import torch  # noqa: E402

KEYS = ("calls", "rows", "decode_steps", "decode_rows", "prefill_tokens", "cached_tokens", "new_tokens")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--ranker", default="score")
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from recdemo.config import Config
    from recdemo.pipeline.recommender import Recommender

    rec = Recommender.from_config(Config.from_env(), dataset_name=args.dataset)
    train = rec.dataset.train_sequences()
    users = [u for u, s in enumerate(train) if len(s) >= 5][:args.users]
    stats, counted = rec.service.decoder.stats, []
    for n, user in enumerate([users[-1]] + users):  # the first: warm-up
        history = [rec.catalog.titles[int(i)] for i in train[user][-5:]]
        rec.explainer.forget()
        rec.profiles._cache.clear()
        before = stats.as_dict()
        rec.recommend(history, ranker=args.ranker)
        if n:
            counted.append({k: v - before[k] for k, v in stats.as_dict().items() if k in KEYS})
    result = {"dataset": args.dataset, "ranker": args.ranker, "users": len(counted),
              "per_user": {k: [c[k] for c in counted] for k in KEYS},
              "mean": {k: round(sum(c[k] for c in counted) / len(counted), 1) for k in KEYS}}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
