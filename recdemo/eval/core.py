"""One evaluation core: sample users -> score each user's candidate list -> ranks -> metrics.

Used by ``evaluate --stage retrieval`` (the sampler), ``evaluate --stage rerank``
(eval/rerank_eval.py) and fine-tune validation (finetune/validate.py:ranking_metrics), so the three
pick the same users for the same seed and turn a ranker's scores into ranks the same way: through
the ranker's own ``finish`` (the code that orders items at inference), never a copy of it.

A rank is 0-based; a target outside the list (not retrieved, or cut off at k) is ``MISS``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from recdemo.llm.batch_score import batchable, score_lists
from recdemo.llm.rankers import ScoredList, finish
from recdemo.metrics import MISS
from recdemo.records import Candidate, RerankRequest


def sample_cases(dataset, split: str = "test", users: int | None = None, seed: int = 0,
                 min_history: int = 0) -> list:
    """A seeded random sample of ``users`` leave-one-out cases of ``split`` (all of them when
    ``users`` is None or too large), of those whose history holds at least ``min_history`` items. The
    pick depends only on the number of such cases and the seed, so without ``min_history`` the valid and
    test splits share their users. The one way every evaluation and bench draws its users."""
    cases = [c for c in dataset.eval_cases(split) if len(c.history) >= min_history]
    if users is None or users >= len(cases):
        return cases
    if users < 1:
        raise ValueError("--users must be at least 1")
    pick = np.sort(np.random.default_rng(seed).choice(len(cases), size=users, replace=False))
    return [cases[i] for i in pick]


@dataclass
class UserList:
    """One user's scored candidate list and what evaluation needs to judge it."""
    scored: ScoredList
    target: int
    history: list[int]
    candidates: list[int]  # the catalog indices offered to the ranker, in the retriever's order
    seconds: float  # the ranker's time for this user (a batch's time shared by its users)

    def triple(self) -> tuple:
        """(sasrec scores, llm scores, target position or -1), as llm.fusion wants a user."""
        if not self.scored.items:
            return np.zeros(1), np.zeros(1), -1
        pos = self.scored.items.index(self.target) if self.target in self.scored.items else -1
        return self.scored.sasrec, self.scored.llm, pos


def retriever_candidates(retriever, n: int) -> Callable:
    """``case -> [Candidate]``: the retriever's top-n for the case's history (as at inference)."""
    def candidates(case) -> list[Candidate]:
        top = retriever.top_k([int(x) for x in case.history], n)
        return [Candidate(index=int(i), score=float(s), rank=r) for r, (i, s) in enumerate(top, 1)]
    return candidates


def can_batch(ranker) -> bool:
    """Whether ``score_users`` can stack several users into one model call for this ranker (every
    ranker with a batched form: ``batch_score.batchable``)."""
    return batchable(ranker)


def score_users(ranker, cases, candidates: Callable, profile_fn: Callable | None = None, k: int = 10,
                batch_size: int = 1, skip_missing: bool = False, progress=None, check=None) -> list[UserList]:
    """Every case's candidate list scored by ``ranker`` (``score_list``: the LLM runs once per user).

    ``batch_size`` > 1 stacks users into one call for rankers that can (``can_batch``); the others
    run one by one. ``skip_missing``: a user whose target is not a candidate is not scored (it is a
    miss whatever the ranker does). ``check()`` runs before each user (e.g. raises on cancel)."""
    batch_size = batch_size if can_batch(ranker) else 1
    out: list[UserList] = []
    pending: list[tuple[RerankRequest, UserList]] = []
    for n, case in enumerate(cases, 1):
        if check is not None:
            check()
        history = [int(x) for x in case.history]
        cands = candidates(case)
        user = UserList(ScoredList([], np.zeros(0), None, []), int(case.target), history,
                        [c.index for c in cands], 0.0)
        out.append(user)
        if skip_missing and user.target not in user.candidates:
            continue
        profile = profile_fn(ranker.catalog, history) if profile_fn is not None else None
        pending.append((RerankRequest(history=history, candidates=cands, profile=profile, k=k), user))
        if len(pending) >= batch_size or n == len(cases):
            _score(ranker, pending)
            pending = []
        if progress is not None:
            progress(n, len(cases))
    if pending:
        _score(ranker, pending)
    return out


def _score(ranker, pending: list[tuple[RerankRequest, UserList]]) -> None:
    start = time.perf_counter()
    if len(pending) == 1:
        scored = [ranker.score_list(pending[0][0])]
    else:
        scored = score_lists(ranker, [req for req, _ in pending])
    seconds = (time.perf_counter() - start) / len(pending)
    for (_, user), s in zip(pending, scored):
        user.scored, user.seconds = s, seconds


def final_items(scored: ScoredList, weight: float, k: int | None, method: str = "rank") -> list[int]:
    """The list the ranker would return: its ``finish`` at this fusion weight, cut at k (None: all)."""
    k = len(scored.items) if k is None else k
    return [r.index for r in finish(scored, k, weight, method)]


def rank_of(user: UserList, weight: float, k: int | None, method: str = "rank") -> int:
    final = final_items(user.scored, weight, k, method)
    return final.index(user.target) if user.target in final else MISS


def ranks(users: Sequence[UserList], weight: float, k: int | None, method: str = "rank") -> list[int]:
    """Every user's target rank in the final list at ``weight`` (``k`` None: the whole list)."""
    return [rank_of(u, weight, k, method) for u in users]


def retrieval_ranks(users: Sequence[UserList], k: int) -> list[int]:
    """The target's rank in the retriever's own top-k (the candidate order), MISS beyond k."""
    return [u.candidates.index(u.target) if u.target in u.candidates[:k] else MISS for u in users]
