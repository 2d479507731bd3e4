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
from recdemo.finetune.tasks import TASKS
from recdemo.metrics import metrics_from_ranks
from recdemo.records import Candidate


class Cancelled(Exception):
    """Raised inside the loop when the cancel event is set; run_finetune turns it into a clean stop."""


def check_cancel(cancel) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def example_loss(model, part: list[dict], pad_id: int, device, rank_sasrec_weight: float = 0.0
                 ) -> tuple[torch.Tensor, int]:
    """(mean loss over the micro-batch's examples, tokens run through the model).

    Examples whose tasks share a loss (tasks.py) run together: the answer-token tasks padded into
    one batch, ``rank`` examples one at a time."""
    groups: dict[object, list[dict]] = {}
    for e in part:
        groups.setdefault(TASKS[e["task"]].loss, []).append(e)
    total, tokens = 0.0, 0
    for loss_of, group in groups.items():
        loss, n = loss_of.train_loss(model, group, pad_id, device, rank_sasrec_weight)
        total, tokens = total + loss, tokens + n
    return total / max(1, len(part)), tokens


@torch.no_grad()
def answer_loss(model, encoded: list[dict], pad_id: int, device, cancel=None, rank_sasrec_weight: float = 0.0
                ) -> dict:
    """Weighted mean validation loss, overall and per task (``val_loss``, ``val_loss_<task>``): each
    example alone, weighted by its answer tokens (a ``rank`` list's one cross-entropy counts as one)."""
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    try:
        for e in encoded:
            check_cancel(cancel)
            loss, n = TASKS[e["task"]].loss.val_loss(model, e, pad_id, device, rank_sasrec_weight)
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
