"""Validation during fine-tuning: answer-token loss, and candidate ranking metrics.

- ``answer_loss``: mean cross-entropy of the answer tokens of held-out validation examples (built
  from ``dataset.eval_cases("valid")``); cheap, so it runs every ``eval_every`` steps.
- ``ranking_metrics``: what the ``score`` ranker measures, computed here so fine-tuning does not
  depend on the rankers package: for each validation user, the PALR ranking prompt lists the
  candidates (SASRec top-N with the held-out item put in if SASRec missed it, or the item plus
  popularity-sampled items without a retriever), every candidate title is scored by the mean
  log-probability of its tokens as the answer, and HR/NDCG/MRR of the held-out item follow.
  The SASRec order of the same lists is reported alongside (``sasrec_*``; ``random_*`` without a
  retriever) as the bar to beat.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ..eval.metrics import metrics_from_ranks
from . import prompts as P


class Cancelled(Exception):
    """Raised inside the loop when the cancel event is set; run_finetune turns it into a clean stop."""


def check_cancel(cancel) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def collate(encoded: list[dict], pad_id: int, device) -> dict:
    """Right-pad a micro-batch; padding is masked out of attention and of the loss."""
    length = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def answer_loss(model, encoded: list[dict], pad_id: int, device, cancel=None) -> dict:
    """Token-weighted mean answer loss, overall and per task (``val_loss``, ``val_loss_<task>``)."""
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    try:
        for e in encoded:
            check_cancel(cancel)
            batch = collate([e], pad_id, device)
            n = int((batch["labels"][:, 1:] != -100).sum())  # tokens the shifted loss averages over
            loss = float(model(**batch).loss)
            for key in ("val_loss", f"val_loss_{e['task']}"):
                s = sums.setdefault(key, [0.0, 0])
                s[0] += loss * n
                s[1] += n
    finally:
        model.train(was_training)
    return {k: (s[0] / s[1] if s[1] else float("nan")) for k, s in sums.items()}


@torch.no_grad()
def candidate_scores(model, tokenizer, prompt: str, texts: list[str], device, chunk: int = 10) -> np.ndarray:
    """Mean log-probability of each text as the answer to ``prompt``.

    The prompt is run once; its key/value cache is repeated for a chunk of candidates, so each
    candidate costs only its own few tokens."""
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    out = model(input_ids=prompt_ids, use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    cache = out.past_key_values
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cand = [tokenizer(t, add_special_tokens=False)["input_ids"] or [pad] for t in texts]
    scores = np.zeros(len(cand))
    for start in range(0, len(cand), chunk):
        part = cand[start:start + chunk]
        width = max(len(c) for c in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for row, c in enumerate(part):
            ids[row, :len(c)] = torch.tensor(c)
            mask[row, :len(c)] = 1
        ids, mask = ids.to(device), mask.to(device)
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(part))
        attn = torch.cat([torch.ones((len(part), prompt_ids.shape[1]), dtype=torch.long, device=device), mask], 1)
        logits = model(input_ids=ids, attention_mask=attn, past_key_values=past, use_cache=True).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for row, c in enumerate(part):
            # token 0 is predicted by the prompt's last position, token j by candidate position j-1
            total = first[c[0]].item()
            if len(c) > 1:
                total += logp[row, torch.arange(len(c) - 1), torch.tensor(c[1:], device=device)].sum().item()
            scores[start + row] = total / len(c)
    return scores


def eval_candidates(builder, case, retriever, n: int, rng: np.random.Generator) -> list[int]:
    """SASRec top-n for the history (target swapped in for the last one when missed), else sampled."""
    history = [int(x) for x in case.history]
    if retriever is not None:
        top = [int(i) for i, _ in retriever.top_k(history, n)]
        if case.target not in top:
            top = top[: n - 1] + [int(case.target)]
        return top
    negs = builder.negatives([case.target], history, n - 1, rng)
    return [int(x) for x in rng.permutation([int(case.target)] + negs)]


def ranking_metrics(model, builder, cases, retriever=None, n_candidates: int = 50, k: int = 10,
                    seed: int = 0, cancel=None, device=None) -> dict:
    """HR/NDCG@5/10/20 + MRR of the held-out item among the candidates, LLM order vs SASRec order."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed + 7)
    tok, cat = builder.tok, builder.catalog
    llm_ranks, sasrec_ranks = [], []
    try:
        for case in cases:
            check_cancel(cancel)
            cands = eval_candidates(builder, case, retriever, n_candidates, rng)
            history = [int(x) for x in case.history]
            from .examples import make_profile
            profile = make_profile(cat, history[-builder.max_history:])
            prompt = P.render(tok, "palr_rank", builder.domain,
                              history=P.format_history(cat, history, max_items=builder.max_history,
                                                       with_attributes=builder.with_attributes),
                              profile=P.format_profile(profile),
                              candidates=P.format_candidates(cat, cands), k=k)
            scores = candidate_scores(model, tok, prompt, [cat.titles[c] for c in cands], device)
            pos = cands.index(int(case.target))
            llm_ranks.append(int((scores > scores[pos]).sum() + (np.delete(scores, pos) == scores[pos]).sum()))
            if retriever is not None:
                sasrec_ranks.append(pos)
            else:  # every rank equally likely: averaging all of them gives the exact expectation
                sasrec_ranks.extend(range(len(cands)))
    finally:
        model.train(was_training)
    out = {k2: v for k2, v in metrics_from_ranks(llm_ranks).items()}
    base = "sasrec" if retriever is not None else "random"  # the order the LLM has to beat
    out.update({f"{base}_{k2}": v for k2, v in metrics_from_ranks(sasrec_ranks).items() if k2 != "users"})
    out["candidates"] = n_candidates
    return out


def finite(metrics: dict) -> dict:
    """JSON-safe copy (NaN -> None)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
