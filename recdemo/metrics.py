"""Ranking metrics for leave-one-out evaluation: one held-out target per user.

A rank is 0-based: the number of candidate items placed ahead of the target. Items already in the
history are not candidates (a recommender never re-offers them), except the target itself when it
also occurs earlier in the history (repeat consumption). Ties count against the target: an item
with the same score as the target is placed ahead of it, so ties can never flatter a model (this
matters for popularity counts, where many items share a score).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CUTOFFS = (5, 10, 20)
MISS = 10**9  # the rank of a target that is not in a list: counts 0 in every metric


def ranks_of_targets(scores: np.ndarray, targets: Sequence[int],
                     histories: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """scores: [B, n_items] (one row per case), targets: [B] -> 0-based ranks [B] (int64)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(targets):
        raise ValueError(f"scores must be [cases, items]; got {scores.shape} for {len(targets)} targets")
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    ahead = scores >= target_scores[:, None]
    ahead[rows, targets] = False  # the target is not ahead of itself
    if histories is not None:
        for row, history in enumerate(histories):
            h = np.asarray(history, dtype=np.int64)
            ahead[row, h[h != targets[row]]] = False
    return ahead.sum(axis=1).astype(np.int64)


def metrics_from_ranks(ranks: Sequence[int], cutoffs: Sequence[int] = CUTOFFS) -> dict:
    """HR@k, NDCG@k (one relevant item: 1/log2(rank+2) when rank < k) and MRR, averaged over cases."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict = {}
    if len(ranks) == 0:
        out.update({f"hr@{k}": 0.0 for k in cutoffs})
        out.update({f"ndcg@{k}": 0.0 for k in cutoffs})
        out.update({"mrr": 0.0, "users": 0})
        return out
    for k in cutoffs:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(ndcg_per_case(ranks, k).mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    out["users"] = int(len(ranks))
    return out


def ndcg_per_case(ranks: Sequence[int], k: int) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def bootstrap_rows(n: int, resamples: int, seed: int) -> np.ndarray:
    """Row indices of ``resamples`` bootstrap samples of ``n`` cases (seeded)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _central(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap ``samples``."""
    tail = (1.0 - level) / 2.0
    return float(np.quantile(samples, tail)), float(np.quantile(samples, 1.0 - tail))


def mean_interval(ranks: Sequence[int], k: int = 10, level: float = 0.95, resamples: int = 2000,
                  seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap interval of NDCG@k over the users: how far the sample's mean could be from the
    population's (a few hundred users leave a wide one)."""
    a = ndcg_per_case(ranks, k)
    if len(a) == 0:
        return None
    return _central(a[bootstrap_rows(len(a), resamples, seed)].mean(axis=1), level)


def ratio_interval(ranks: Sequence[int], base_ranks: Sequence[int], k: int = 10, level: float = 0.95,
                   resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """Paired bootstrap interval of NDCG@k(ranks) / NDCG@k(base_ranks): users are resampled with
    their two ranks together, so the interval is the lift's, not two independent noises. None when
    the base scores 0 on the sample."""
    a, b = ndcg_per_case(ranks, k), ndcg_per_case(base_ranks, k)
    if len(a) != len(b):
        raise ValueError("ranks and base_ranks must cover the same cases")
    if len(a) == 0 or b.sum() == 0:
        return None
    idx = bootstrap_rows(len(a), resamples, seed)
    num, den = a[idx].sum(axis=1), b[idx].sum(axis=1)
    return _central(num[den > 0] / den[den > 0], level)
