"""Leave-one-out evaluation of retrieval models (SASRec and the baselines) on the same users.

Protocols:
- ``full`` (the headline): every catalog item is ranked, history items excluded (masked), the
  target is the user's last item (``test``) or second to last (``valid``).
- ``unmasked``: the same ranking with the history left in (every item ranked, the user's earlier
  items included). Published numbers differ on this choice, and on a dataset where users rarely
  repeat an item (amazon-beauty) the earlier items crowd the top and move NDCG by a large factor,
  so ``evaluate`` always reports both.
- ``sampled100`` (an extra, for comparison with papers that use it): the target is ranked among
  100 negatives sampled uniformly from the items not in the history, seeded, the same negatives
  for every model. Sampled numbers flatter a model; they are never the headline.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from recdemo.eval.core import sample_cases
from recdemo.metrics import metrics_from_ranks, ranks_of_targets

PROTOCOLS = ("full", "unmasked", "sampled100")
N_SAMPLED_NEGATIVES = 100


def sample_negatives(cases, n_items: int, seed: int = 0, n: int = N_SAMPLED_NEGATIVES) -> np.ndarray:
    """[cases, n] item indices: per case, ``n`` distinct items outside its history and target."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(cases), n), dtype=np.int64)
    for row, case in enumerate(cases):
        seen = set(np.asarray(case.history).tolist()) | {int(case.target)}
        if n_items - len(seen) < n:
            raise ValueError(f"sampled100 needs {n} items outside a history; the catalog has only {n_items} items")
        picked: list[int] = []
        while len(picked) < n:
            draw = rng.choice(n_items, size=min(n_items, n + len(seen)), replace=False)
            picked = [int(i) for i in draw if int(i) not in seen][:n]
        out[row] = picked
    return out


def evaluate_scores(score_batch: Callable[[Sequence], np.ndarray], cases, protocols=PROTOCOLS,
                    negatives: np.ndarray | None = None, batch_size: int = 256) -> dict:
    """Metrics per protocol for one model: ``score_batch(histories) -> [B, n_items]`` dense scores."""
    ranks: dict[str, list] = {p: [] for p in protocols}
    t0 = time.perf_counter()
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        histories = [c.history for c in chunk]
        targets = np.array([c.target for c in chunk], dtype=np.int64)
        scores = np.asarray(score_batch(histories), dtype=np.float64)
        if "full" in protocols:
            ranks["full"].append(ranks_of_targets(scores, targets, histories))
        if "unmasked" in protocols:
            ranks["unmasked"].append(ranks_of_targets(scores, targets))
        if "sampled100" in protocols:
            if negatives is None:
                raise ValueError("sampled100 needs the sampled negatives")
            neg = negatives[start:start + len(chunk)]
            neg_scores = np.take_along_axis(scores, neg, axis=1)
            target_scores = scores[np.arange(len(chunk)), targets]
            ranks["sampled100"].append((neg_scores >= target_scores[:, None]).sum(axis=1))
    seconds = time.perf_counter() - t0
    out = {}
    for p in protocols:
        out[p] = metrics_from_ranks(np.concatenate(ranks[p]) if ranks[p] else [])
        out[p]["seconds"] = seconds
    return out


def evaluate_models(models: dict[str, Callable], dataset, split: str = "test", users: int | None = None,
                    seed: int = 0, protocols=PROTOCOLS) -> dict:
    """Every model on the same cases (and the same sampled negatives): {protocol: {model: metrics}}."""
    cases = sample_cases(dataset, split, users, seed)
    negatives = sample_negatives(cases, dataset.n_items, seed) if "sampled100" in protocols else None
    result: dict = {p: {} for p in protocols}
    for name, score_batch in models.items():
        per_protocol = evaluate_scores(score_batch, cases, protocols, negatives)
        for p in protocols:
            result[p][name] = per_protocol[p]
    return result
