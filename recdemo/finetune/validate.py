"""Validation during fine-tuning: answer-token loss, and the score ranker's metrics.

- ``answer_loss``: mean cross-entropy of the answer tokens of held-out validation examples (built
  from ``dataset.eval_cases("valid")``); cheap, so it runs every ``eval_every`` steps.
- ``ranking_metrics``: HR/NDCG@10 of the ``score`` ranker (recdemo/llm/rankers/score.py, the same
  code as at inference) on validation users' SASRec top-N lists, next to SASRec's own order of the
  same lists and the fused order; run before and after training (it is the slow part).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from recdemo.eval.core import ranks, retriever_candidates, score_users
from recdemo.finetune.examples import make_profile
from recdemo.llm.fusion import select_weight
from recdemo.llm.models import LLM
from recdemo.llm.rankers.score import ScoreRanker
from recdemo.metrics import metrics_from_ranks
from recdemo.records import Candidate


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


def example_loss(model, part: list[dict], pad_id: int, device, rank_sasrec_weight: float = 0.0
                 ) -> tuple[torch.Tensor, int]:
    """(mean loss over the micro-batch's examples, tokens run through the model).

    ``rank`` examples (a listwise loss over a tree of candidate titles, ft_rank.py) run one at a
    time; the others are padded into one batch for the answer-token loss."""
    from recdemo.finetune.rank_task import rank_loss
    total, tokens = 0.0, 0
    plain = [e for e in part if e["task"] != "rank"]
    for e in part:
        if e["task"] == "rank":
            loss, n = rank_loss(model, e, device, rank_sasrec_weight)
            total, tokens = total + loss, tokens + n
    if plain:
        batch = collate(plain, pad_id, device)
        total = total + answer_token_loss(model, batch)[0] * len(plain)
        tokens += int(batch["attention_mask"].sum())
    return total / max(1, len(part)), tokens


def answer_token_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over the answer tokens, their count).

    Only the answer's positions get logits (``logits_to_keep``): the output projection onto the
    49k-token vocabulary is ~20% of SmolLM2's FLOPs per token, and the prompt tokens, which are
    most of every sequence, have no label anyway."""
    labels = batch["labels"]
    answer = labels != -100
    first = int(answer.float().argmax(dim=1).min()) if bool(answer.any()) else labels.shape[1] - 1
    first = max(first, 1)  # position first-1 predicts token first
    keep = labels.shape[1] - first + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits[:, :-1]
    target = labels[:, first:]
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100)
    return loss, int((target != -100).sum())


@torch.no_grad()
def answer_loss(model, encoded: list[dict], pad_id: int, device, cancel=None, rank_sasrec_weight: float = 0.0
                ) -> dict:
    """Token-weighted mean answer loss, overall and per task (``val_loss``, ``val_loss_<task>``).
    A ``rank`` example counts as one token: its loss is one cross-entropy over the candidate list."""
    from recdemo.finetune.rank_task import rank_loss

    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    try:
        for e in encoded:
            check_cancel(cancel)
            if e["task"] == "rank":
                loss, n = rank_loss(model, e, device, rank_sasrec_weight)[0], 1
            else:
                loss, n = answer_token_loss(model, collate([e], pad_id, device))
            loss = float(loss)
            for key in ("val_loss", f"val_loss_{e['task']}"):
                s = sums.setdefault(key, [0.0, 0])
                s[0] += loss * n
                s[1] += n
    finally:
        model.train(was_training)
    return {k: (s[0] / s[1] if s[1] else float("nan")) for k, s in sums.items()}


def sampled_candidates(builder, n: int, seed: int):
    """``case -> [Candidate]`` without a retriever: the held-out item plus n-1 popularity-sampled
    items, shuffled, all with score 0 (one seeded generator across the cases, in order)."""
    rng = np.random.default_rng(seed + 7)

    def candidates(case) -> list[Candidate]:
        history = [int(x) for x in case.history]
        items = rng.permutation([int(case.target)] + builder.negatives([case.target], history, n - 1, rng))
        return [Candidate(int(i), 0.0, r) for r, i in enumerate(items, 1)]
    return candidates


def ranking_metrics(model, builder, cases, retriever=None, n_candidates: int = 50, k: int = 10,
                    seed: int = 0, cancel=None, device=None, llm_name: str = "finetune") -> dict:
    """The ``score`` ranker (exactly as at inference) on validation users' candidate lists, scored
    by the evaluation core (eval/core.py) that ``evaluate`` uses.

    Candidates: SASRec's top-n (as at inference); without a retriever ``sampled_candidates``.
    Returns HR/NDCG/MRR of the LLM order (``hr@10``...; ranks over the whole list), of SASRec's
    order of the same lists (``sasrec_*``; ``random_*`` without a retriever), and of the fused order
    at the weight that fusion.select_weight picks on these users (``fused_*``, ``fusion_weight``).
    A user whose held-out item is not among the candidates counts as a miss for all three and costs
    no LLM time."""
    was_training = model.training
    model.eval()
    record = LLM(model=model, tokenizer=builder.tok, name=llm_name, device=torch.device(device or "cpu"),
                 dtype=next(model.parameters()).dtype)
    ranker = ScoreRanker(record, builder.dataset, retriever, fuse=False, max_history=builder.max_history)
    candidates = (retriever_candidates(retriever, n_candidates) if retriever is not None
                  else sampled_candidates(builder, n_candidates, seed))
    try:
        lists = score_users(ranker, cases, candidates, k=k, skip_missing=True, check=lambda: check_cancel(cancel),
                            profile_fn=lambda catalog, h: make_profile(catalog, h[-builder.max_history:]))
    finally:
        model.train(was_training)

    metrics = dict(metrics_from_ranks(ranks(lists, 1.0, None)))
    if retriever is not None:
        metrics.update({f"sasrec_{m}": v for m, v in metrics_from_ranks(ranks(lists, 0.0, None)).items()
                        if m != "users"})
        weight, _ = select_weight([u.triple() for u in lists], k=k)
        metrics.update({f"fused_{m}": v for m, v in metrics_from_ranks(ranks(lists, weight, None)).items()
                        if m != "users"})
        metrics["fusion_weight"] = weight
    else:  # a shuffled list: every rank equally likely, so all of them averaged is the expectation
        metrics.update({f"random_{m}": v for m, v in metrics_from_ranks(
            [r for _ in lists for r in range(n_candidates)]).items() if m != "users"})
    metrics["users_with_target_in_candidates"] = sum(u.target in u.candidates for u in lists)
    metrics["candidates"] = n_candidates
    return metrics


def finite(metrics: dict) -> dict:
    """JSON-safe copy (NaN -> None)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
