"""Non-neural baselines on the training sequences: most popular, and item-kNN.

Item-kNN (as in ../shared/ANCHORS.md): two items co-occur when one user's training sequence holds
both; similarity is the cosine of their user sets, co(a, b) / sqrt(n(a) n(b)); a history scores an
item by the summed similarity to its last 20 items.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import sparse


def _train_counts(sequences, n_items: int) -> np.ndarray:
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sequences else np.zeros(0, int)
    return np.bincount(flat, minlength=n_items).astype(np.float64)


class Popularity:
    """Score = number of training interactions with the item."""

    def __init__(self, sequences, n_items: int):
        self.n_items = n_items
        self.counts = _train_counts(sequences, n_items)

    @classmethod
    def for_dataset(cls, dataset) -> "Popularity":
        return cls(dataset.train_sequences(), dataset.n_items)

    def score_all(self, history: Sequence[int] = ()) -> np.ndarray:
        return self.counts.copy()

    def score_batch(self, histories) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), self.n_items)).copy()


class ItemKNN:
    def __init__(self, sequences, n_items: int, last: int = 20):
        self.n_items, self.last = n_items, last
        rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(sequences)]) if sequences else []
        cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sequences else []
        x = sparse.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)),
                              shape=(len(sequences), n_items))
        x.data[:] = 1.0  # a user who repeats an item still counts once
        self.users_items = x  # [users, items], binary
        self.items_users = x.T.tocsr()  # [items, users]
        self.user_counts = np.asarray(x.sum(axis=0)).ravel()  # n(i): users who have item i
        with np.errstate(divide="ignore"):
            self._inv_sqrt = np.where(self.user_counts > 0, 1.0 / np.sqrt(self.user_counts), 0.0)

    @classmethod
    def for_dataset(cls, dataset, last: int = 20) -> "ItemKNN":
        return cls(dataset.train_sequences(), dataset.n_items, last)

    def related(self, a: int, b: int) -> int:
        """Co-occurrence count: training users who have both item ``a`` and item ``b``."""
        return int(self.items_users[a].multiply(self.items_users[b]).sum())

    def cooccurrence(self, item: int) -> np.ndarray:
        """Co-occurrence counts of ``item`` with every item, [n_items] (its own entry = n(item))."""
        return np.asarray((self.items_users[item] @ self.users_items).todense()).ravel()

    def score_batch(self, histories) -> np.ndarray:
        """[B, n_items] item-kNN scores (history items not excluded)."""
        rows, cols, vals = [], [], []
        for b, history in enumerate(histories):
            recent = np.unique(np.asarray(history, dtype=np.int64)[-self.last:])
            rows.extend([b] * len(recent))
            cols.extend(recent.tolist())
            vals.extend(self._inv_sqrt[recent].tolist())
        # h[b, i] = 1/sqrt(n(i)) for the recent items; (h @ X^T @ X)[b, j] / sqrt(n(j)) = sum_i cos(i, j)
        h = sparse.csr_matrix((vals, (rows, cols)), shape=(len(histories), self.n_items))
        co = (h @ self.items_users) @ self.users_items
        return np.asarray(co.todense()) * self._inv_sqrt[None, :]

    def score_all(self, history: Sequence[int]) -> np.ndarray:
        return self.score_batch([history])[0]
