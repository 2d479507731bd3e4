"""The retrieval stage: SASRec's top-N candidates for any history, a demo user's included.

The query is SASRec's last hidden state for the history; a faiss inner-product index over the
item embeddings returns the best items, history excluded. Histories SASRec cannot read (empty, or
only items never seen in training) fall back to content similarity (the text index, when given)
or to popularity.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from recdemo.config import RetrievalConfig
from recdemo.errors import ModelNotFound
from recdemo.retrieval.baselines import Popularity
from recdemo.retrieval.checkpoint import cache_key, checkpoint_problem, load_checkpoint, save_checkpoint
from recdemo.retrieval.index import ItemIndex
from recdemo.retrieval.sasrec import SASRec
from recdemo.retrieval.train import train_sasrec

log = logging.getLogger(__name__)


class Retriever:
    def __init__(self, model: SASRec, dataset, text_index=None):
        if model.cfg.n_items != dataset.n_items:
            raise ValueError(f"the SASRec model knows {model.cfg.n_items} items but dataset "
                             f"{dataset.name!r} has {dataset.n_items}; retrain it")
        self.model = model.eval()
        self.dataset = dataset
        self.n_items = dataset.n_items
        self.text_index = text_index
        self.meta = getattr(model, "meta", {})
        self.popularity = Popularity.for_dataset(dataset)
        self.trained_items = self.popularity.counts > 0  # items SASRec saw as input during training
        # The model is frozen from here on: one read-only copy of the embeddings serves every caller.
        self._item_embeddings = model.output_embeddings.detach().cpu().numpy().astype(np.float32)
        self._item_embeddings.setflags(write=False)
        self.index = ItemIndex(self._item_embeddings)

    @classmethod
    def for_dataset(cls, dataset, cfg: RetrievalConfig, train_if_missing: bool = True, text_index=None,
                    progress: bool = True, cancel=None, on_epoch=None) -> "Retriever":
        """Load the checkpoint for ``dataset`` (the shipped one when trained on exactly this data, else
        the cache's); when missing or stale, train (with a progress bar) and save it into the cache,
        never over a shipped checkpoint. ``cancel`` and ``on_epoch`` go to train_sasrec."""
        # The shipped checkpoint when it was trained on exactly this data, else the cache's (also
        # when the shipped weights turn out unreadable: they are never replaced from here).
        model = load_checkpoint(dataset, cfg.checkpoint_dir)
        if model is None:
            model = load_checkpoint(dataset, cfg.cache_dir, cache_key(dataset))
        if model is None:
            problem = checkpoint_problem(dataset, cfg.checkpoint_dir) or "the checkpoint could not be read"
            if not train_if_missing:
                raise ModelNotFound(f"{problem}; train one with `python -m recdemo train --dataset {dataset.name}`")
            log.warning("%s: training SASRec now", problem)
            rcfg = cfg.for_dataset(dataset.name)
            model, report = train_sasrec(dataset, rcfg, progress=progress, cancel=cancel, on_epoch=on_epoch)
            directory, key = Path(cfg.cache_dir), cache_key(dataset)
            save_checkpoint(model, rcfg, dataset, directory, report, key=key)
            model = load_checkpoint(dataset, directory, key) or model
        return cls(model, dataset, text_index=text_index)

    @property
    def item_embeddings(self) -> np.ndarray:
        """[n_items, hidden] float32 (read-only): row i is catalog item i's output embedding."""
        return self._item_embeddings

    # -- histories --
    def _check(self, history: Sequence[int]) -> list[int]:
        items = [int(i) for i in history]
        bad = [i for i in items if not 0 <= i < self.n_items]
        if bad:
            raise ValueError(f"item index {bad[0]} is not in the catalog of {self.dataset.name!r} "
                             f"(valid indices are 0 to {self.n_items - 1})")
        return items

    def _readable(self, history: Sequence[int]) -> list[int]:
        """The history items SASRec learned to read (never-trained items would only add noise)."""
        return [i for i in history if self.trained_items[i]]

    def method_for(self, history: Sequence[int]) -> str:
        """Which method answers ``top_k`` for this history: 'sasrec', 'text' or 'popularity'."""
        items = self._check(history)
        if self._readable(items):
            return "sasrec"
        return "text" if items and self.text_index is not None else "popularity"

    def query(self, history: Sequence[int]) -> np.ndarray:
        """SASRec's query vector for one history: [hidden] float32."""
        return self.model.encode([self._readable(self._check(history))])[0].numpy()

    # -- retrieval --
    def top_k(self, history: Sequence[int], k: int = 50) -> list[tuple[int, float]]:
        """The ``k`` best items not in ``history``, best first, as (catalog index, score)."""
        items = self._check(history)
        method = self.method_for(items)
        if method == "sasrec":
            ids, scores = self.index.search(self.query(items), k, exclude=items)
            return [(int(i), float(s)) for i, s in zip(ids, scores)]
        seen = set(items)
        if method == "text":
            pairs = self.text_index.similar(items, k + len(seen))
            return [(int(i), float(s)) for i, s in pairs if int(i) not in seen][:k]
        counts = self.popularity.counts
        order = np.argsort(-counts, kind="stable")
        return [(int(i), float(counts[i])) for i in order if int(i) not in seen][:k]

    def score_batch(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Dense SASRec scores [B, n_items] (history items NOT excluded), for evaluation."""
        with torch.no_grad():
            return self.model.score([self._readable(self._check(h)) for h in histories]).numpy()

    def score_all(self, history: Sequence[int]) -> np.ndarray:
        """Dense SASRec scores [n_items] for one history (history items NOT excluded)."""
        return self.score_batch([history])[0]
