"""Fusing an LLM ranker's scores with SASRec's, and choosing the weight on validation users.

Both score lists are normalised per list before mixing, because their scales have nothing in common
(SASRec dot products vs log-probabilities vs P(Yes)):
- ``rank`` (default): each item's position in the list, mapped to [0, 1] (1 = best; ties share
  their mean position). Robust to outliers and meaningful for PALR, whose LLM score is a position.
- ``zscore``: (score - mean) / std.
``fused = (1 - w) * sasrec + w * llm``; ties in the fused score keep SASRec's order, so ``w = 0``
reproduces SASRec's ranking exactly, and ``w = 1`` is the LLM alone (``--no-fuse``).

The weight is picked on the validation split from ``GRID`` (which contains 0), by NDCG@10 with
ties going to the smaller weight, and a weight above 0 only when its gain over SASRec passes a
paired bootstrap test (``select_weight``): on validation users the fused ranker can never score
below SASRec, and a gain that is only noise of the user sample does not move the weight off 0. Where the
chosen weights are stored and looked up: fusion_store.py.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from recdemo.metrics import MISS, bootstrap_rows, ndcg_per_case

GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0
METHODS = ("rank", "zscore")


def normalize(scores: Sequence[float], method: str = "rank") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return s
    if method == "zscore":
        s = np.where(np.isfinite(s), s, np.nan)
        fill = np.nanmin(s) - 1.0 if np.isfinite(s).any() else 0.0
        s = np.nan_to_num(s, nan=fill)  # -inf (never chosen) sits just below the worst real score
        std = s.std()
        return (s - s.mean()) / std if std > 0 else np.zeros_like(s)
    if method != "rank":
        raise ValueError(f"unknown fusion method {method!r}: use one of {', '.join(METHODS)}")
    if len(s) == 1:
        return np.ones(1)
    # mean position of each tie group (0 = best), then 1 for the best, 0 for the worst
    order = np.argsort(-s, kind="stable")
    pos = np.empty(len(s))
    pos[order] = np.arange(len(s))
    _, inverse = np.unique(-s, return_inverse=True)
    mean_pos = np.bincount(inverse, weights=pos) / np.bincount(inverse)
    return 1.0 - mean_pos[inverse] / (len(s) - 1)


def fuse(sasrec: Sequence[float], llm: Sequence[float], weight: float, method: str = "rank") -> np.ndarray:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the fusion weight must be between 0 and 1, got {weight}")
    if len(sasrec) != len(llm):
        raise ValueError("sasrec and llm score lists must have the same length")
    return (1.0 - weight) * normalize(sasrec, method) + weight * normalize(llm, method)


def fused_order(sasrec: Sequence[float], llm: Sequence[float], weight: float, method: str = "rank") -> np.ndarray:
    """Positions of the list, best first: by fused score, ties by SASRec score, then list order."""
    sasrec = np.asarray(sasrec, dtype=np.float64)
    fused = fuse(sasrec, llm, weight, method)
    return np.lexsort((np.arange(len(fused)), -sasrec, -np.round(fused, 12)))


# -- choosing the weight on validation --
def target_rank(order: np.ndarray, target_pos: int) -> int:
    """The target's 0-based place in ``order`` (a list's positions, best first); MISS when absent."""
    hits = np.flatnonzero(order == target_pos) if target_pos >= 0 else []
    return int(hits[0]) if len(hits) else MISS


def per_user_ndcg(lists, weight: float, k: int = 10, method: str = "rank") -> np.ndarray:
    return ndcg_per_case([target_rank(fused_order(s, l, weight, method), t) for s, l, t in lists], k)


def gain_p_value(lists, weight: float, k: int = 10, method: str = "rank", resamples: int = 2000,
                 seed: int = 0) -> float:
    """One-sided paired bootstrap over users: how often a resample shows no gain of ``weight``
    over SASRec alone (w = 0). Small = the gain is unlikely to be luck of the user sample."""
    diff = per_user_ndcg(lists, weight, k, method) - per_user_ndcg(lists, 0.0, k, method)
    if len(diff) == 0 or not diff.any():
        return 1.0
    idx = bootstrap_rows(len(diff), resamples, seed)
    return float((diff[idx].mean(axis=1) <= 0).mean())


def select_weight(lists: Sequence[tuple[Sequence[float], Sequence[float], int]], k: int = 10,
                  grid: Sequence[float] = GRID, method: str = "rank",
                  alpha: float | None = 0.05) -> tuple[float, dict[float, float]]:
    """``lists``: per user (sasrec scores, llm scores, position of the target in the list or -1).
    Returns the weight with the best mean NDCG@k (ties: the smaller weight) and the whole table.

    With ``alpha``, a weight above 0 is kept only if its gain over w = 0 passes the paired bootstrap
    (``gain_p_value < alpha``); else 0. Picking the best of 11 weights on a few hundred users
    otherwise chases noise: a weak LLM then "wins" on validation and loses on test."""
    if 0.0 not in grid:
        raise ValueError("the weight grid must contain 0 (SASRec alone), so fusion can never lose to it")
    table = {float(w): float(per_user_ndcg(lists, w, k, method).mean()) if len(lists) else 0.0
             for w in sorted(grid)}
    best = max(table, key=lambda w: (round(table[w], 12), -w))
    if best > 0 and alpha is not None and gain_p_value(lists, best, k, method) >= alpha:
        best = 0.0
    return best, table
