"""Prompt tokens the LLM computes per demo request (profile + 10 explanations), counted, not timed.

    python bench/prefill_count.py                        # movielens-small, 6 users
    python bench/prefill_count.py --dataset amazon-beauty --users 4 --compare

For each of --users real users (last 20 training items, item-kNN's top 10 as the items to explain), one
request's LLM work runs as the demo runs it: ``ProfileGenerator.generate`` (two greedy passes), then
``Explainer.explain`` (one batched call); ``per_call_*`` lists those three calls. ``llm/decode.py`` counts what it prefilled; "before" is what
the previous decoding (``model.generate``, left-padded batch, the profile's second pass continuing the
first one's KV) prefilled for the same calls: rows x longest prompt, or only the added tokens. Requests
run in order on one service, so the cross-call prefix cache is warm from the second one on.
``--compare`` also runs the explanation prompts through the old ``model.generate`` path and counts the
answers that differ (bf16 rounding of a prefix computed alone can flip a near tie). Nothing is timed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import recdemo  # noqa: E402,F401  (sets OpenMP defaults before torch loads: config.OPENMP_DEFAULTS)
import torch  # noqa: E402


def old_cost(calls: list[list[list[int]]]) -> list[int]:
    """What model.generate prefilled for each logged call (the rows of each call, in order)."""
    costs, previous = [], None
    for rows in calls:
        if len(rows) == 1 and previous is not None and rows[0][:len(previous)] == previous:
            costs.append(len(rows[0]) - len(previous))  # the profile's pass 2 continued pass 1's cache
        else:
            costs.append(len(rows) * max(len(r) for r in rows))
        previous = rows[0] if len(rows) == 1 else None
    return costs


def old_generate(llm, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The previous LLMService.generate without stopping criteria (compare the text up to the first newline)."""
    tok = llm.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = side
    with torch.inference_mode():
        out = llm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
    return [t.split("\n")[0] for t in tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from recdemo.config import Config
    from recdemo.llm.decode import Decoder
    from recdemo.llm.explain import Explainer
    from recdemo.llm.profile import ProfileGenerator
    from recdemo.llm.stack import Stack
    from recdemo.retrieval.baselines import ItemKNN

    stack = Stack.from_config(Config.from_env(), dataset_name=args.dataset)
    data, service = stack.dataset, stack.service
    knn = ItemKNN.for_dataset(data)
    profiles, explainer = ProfileGenerator(service, data.catalog), Explainer(service, data, None, knn=knn)
    calls: list = []
    plain = Decoder.generate

    computed: list = []  # prefill tokens of each logged call

    def logged(self, llm, rows, *a, **k):
        calls.append([list(r) for r in rows])
        before = self.stats.prefill_tokens
        try:
            return plain(self, llm, rows, *a, **k)
        finally:
            computed.append(self.stats.prefill_tokens - before)
    Decoder.generate = logged
    train = data.train_sequences()
    rng = np.random.default_rng(0)
    users = [int(u) for u in rng.choice([u for u, s in enumerate(train) if len(s) >= 5], args.users, replace=False)]
    stats, rows_out, differ, compared = service.decoder.stats, [], 0, 0
    for n, user in enumerate(users):
        history = [int(i) for i in train[user][-20:]]
        scores = knn.score_all(history)
        scores[history] = -np.inf
        items = [int(i) for i in np.argsort(-scores, kind="stable")[:10]]
        calls.clear()
        computed.clear()
        before = stats.as_dict()
        profiles.generate(history)
        explainer.explain(history, items)
        after = stats.as_dict()
        delta = {key: after[key] - before[key] for key in after}
        row = {"request": n + 1, "user": user, "calls": len(calls), "prompt_tokens": delta["prompt_tokens"],
               "prefill_before": sum(old_cost(calls)), "prefill_after": delta["prefill_tokens"],
               "cached": delta["cached_tokens"], "shared": delta["shared_tokens"],
               "per_call_before": old_cost(calls), "per_call_after": list(computed)}
        if args.compare:
            with service.base_model() as llm:
                old = old_generate(llm, explainer.last_prompts, explainer.max_new_tokens)
            new = service.generate(explainer.last_prompts, max_new_tokens=explainer.max_new_tokens, stop_strings=["\n"])
            differ += sum(a != b[:len(a)] and b != a[:len(b)] for a, b in zip(old, new))
            compared += len(old)
        rows_out.append(row)
        print(json.dumps(row), flush=True)
    later = rows_out[2:] or rows_out
    summary = {"dataset": args.dataset, "model": service.describe(), "requests": len(rows_out),
               "prefill_before_mean": round(float(np.mean([r["prefill_before"] for r in later])), 1),
               "prefill_after_mean": round(float(np.mean([r["prefill_after"] for r in later])), 1),
               "from_request": 3 if len(rows_out) > 2 else 1, "cache_entries": len(service.decoder.cache),
               "cache_tokens": service.decoder.cache.tokens}
    if args.compare:
        summary["explanations_differing_from_model_generate"] = f"{differ}/{compared}"
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
