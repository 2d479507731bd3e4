"""Exact maximum-inner-product search over item embeddings (faiss ``IndexFlatIP``).

SASRec scores an item as ``query · item_embedding``, so an inner-product index over the output
embeddings returns exactly SASRec's top items, without scoring in Python.
"""
from __future__ import annotations

from typing import Iterable

import faiss
import numpy as np


class ItemIndex:
    def __init__(self, embeddings: np.ndarray):
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) == 0:
            raise ValueError(f"item embeddings must be a non-empty [items, dim] array, got shape {emb.shape}")
        self.n_items, self.dim = emb.shape
        self.index = faiss.IndexFlatIP(self.dim)
        self.index.add(emb)

    def search(self, query: np.ndarray, k: int, exclude: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for one query vector, best first, skipping ``exclude``: (ids, scores)."""
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self.dim:
            raise ValueError(f"query has {q.shape[1]} dimensions, the index {self.dim}")
        skip = {int(i) for i in exclude}
        # Ask for enough extra results that k survive the exclusion.
        want = min(self.n_items, max(0, k) + len(skip))
        if want == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores, ids = self.index.search(q, want)
        keep = [j for j, i in enumerate(ids[0]) if i >= 0 and int(i) not in skip][:k]
        return ids[0][keep].astype(np.int64), scores[0][keep]
