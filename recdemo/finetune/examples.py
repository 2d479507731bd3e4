"""Fine-tuning examples for every task in tasks.py, built from training sequences only.

Every training example cuts one user's *training* sequence (``dataset.train_sequences()``: the
last two items of each user, validation and test, are not in it) at a random point: the items
before the cut are the history, the items after it are the answer. Validation examples come from
``dataset.eval_cases("valid")`` and are only ever scored, never trained on.

Each task (tasks.py) makes, renders and encodes its own examples; the builder holds what they
share: the dataset's training sequences, the tokenizer and prompt format, profiles, and the
negative sampler (hard negatives similar to the targets, by SASRec embeddings or else shared
attributes, the rest by popularity). Negatives only come from items that occur in training
sequences, and never from the user's own training items.
"""
from __future__ import annotations

import numpy as np

from recdemo.finetune.tasks import TASKS, Example, check_tasks
from recdemo.llm import prompts as P
from recdemo.llm.profile import heuristic_profile

MIN_HISTORY = 3  # a cut leaves at least this many history items (when the sequence allows)


def make_profile(catalog, history):
    """The PIPELINE's heuristic profile (no LLM: an LLM profile per example would be far too slow)."""
    return heuristic_profile(catalog, list(history))


class ExampleBuilder:
    """Builds examples, renders them with the model's prompt format and tokenizes them."""

    def __init__(self, dataset, tokenizer, retriever=None, max_history: int = P.MAX_HISTORY,
                 n_candidates: int = 20, max_targets: int = 3, with_attributes: bool = False,
                 hard_fraction: float = 0.75, rank_candidates: int = 50):
        self.dataset, self.catalog, self.tok = dataset, dataset.catalog, tokenizer
        self.domain = P.domain_for(self.catalog)
        self.max_history, self.n_candidates, self.max_targets = max_history, n_candidates, max_targets
        self.with_attributes, self.hard_fraction = with_attributes, hard_fraction
        self.retriever, self.rank_candidates = retriever, rank_candidates
        self.train = dataset.train_sequences()
        self.train_ratings = dataset.train_ratings()
        n = dataset.n_items
        counts = np.bincount(np.concatenate([s for s in self.train if len(s)] or [np.zeros(0, int)]),
                             minlength=n).astype(np.float64)
        self.pool = np.flatnonzero(counts)  # items seen in training: the only possible negatives
        if len(self.pool) == 0:
            raise ValueError("the dataset has no training interactions to build examples from")
        self.pool_p = counts[self.pool] / counts[self.pool].sum()  # popularity (training counts)
        self.in_pool = counts > 0
        self.emb = self._embeddings(retriever, n)
        self.attr = self._attribute_matrix() if self.emb is None else None

    # -- similarity sources for hard negatives: SASRec embeddings, else shared attributes --
    @staticmethod
    def _embeddings(retriever, n_items: int) -> np.ndarray | None:
        emb = getattr(retriever, "item_embeddings", None) if retriever is not None else None
        if emb is None:
            return None
        emb = np.asarray(emb.detach().cpu() if hasattr(emb, "detach") else emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != n_items:
            return None  # not indexed by catalog position: do not guess
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)

    def _attribute_matrix(self) -> np.ndarray | None:
        names = sorted({a for attrs in self.catalog.attributes for a in attrs})
        if not names:
            return None
        col = {a: j for j, a in enumerate(names)}
        mat = np.zeros((len(self.catalog), len(names)), dtype=np.float32)
        for i, attrs in enumerate(self.catalog.attributes):
            for a in attrs:
                mat[i, col[a]] = 1.0
        return mat

    def negatives(self, targets, exclude, n: int, rng: np.random.Generator) -> list[int]:
        """``n`` items similar to ``targets`` (``hard_fraction``), the rest popularity-sampled."""
        banned = set(int(x) for x in exclude) | set(int(t) for t in targets)
        out: list[int] = []
        sim = None
        if self.emb is not None:
            sim = self.emb @ self.emb[list(targets)].T
        elif self.attr is not None:
            sim = self.attr @ self.attr[list(targets)].T
        if sim is not None:
            sim = sim.max(axis=1) + rng.random(len(sim)) * 1e-3  # random tie-break
            sim[~self.in_pool] = -np.inf
            n_hard = int(round(n * self.hard_fraction))
            for i in np.argsort(-sim)[: 4 * n + len(banned)]:  # sample from a pool 4x larger: variety
                if sim[i] > -np.inf and int(i) not in banned:
                    out.append(int(i))
            out = [int(x) for x in rng.permutation(out)[:n_hard]] if out else []
        banned.update(out)
        tries = 0
        while len(out) < n and tries < 50 * n + 100:
            tries += 1
            x = int(rng.choice(self.pool, p=self.pool_p))
            if x not in banned:
                banned.add(x)
                out.append(x)
        return out

    def history_text(self, ex: Example, n_history: int) -> str:
        """The prompt's history lines: the last ``n_history`` items of ``ex.history``."""
        return P.format_history(self.catalog, ex.history, max_items=n_history, with_attributes=self.with_attributes)

    def profile(self, history):
        return make_profile(self.catalog, history)

    # -- examples: each task makes its own (tasks.py); these draw the users and cut points --
    def _example(self, task: str, user: int, history, items, rng, label=None) -> Example:
        return TASKS[task].make(self, user, history, items, rng, label)

    def training_examples(self, tasks, n: int, seed: int = 0) -> list[Example]:
        """``n`` examples, tasks taken in turn; each from a random user and a random cut point."""
        tasks = [TASKS[t] for t in check_tasks(tasks)]
        rng = np.random.default_rng(seed)
        users = [u for u, s in enumerate(self.train) if len(s) >= 2]
        if not users:
            raise ValueError("no user has two or more training interactions: nothing to fine-tune on")

        def cut(multi: bool) -> tuple[int, np.ndarray, int]:
            u = users[int(rng.integers(len(users)))]
            seq = self.train[u]
            hi = len(seq) - 2 if multi and len(seq) >= 3 else len(seq) - 1  # room for 2 targets if possible
            return u, seq, int(rng.integers(min(MIN_HISTORY, hi), hi + 1))  # history = seq[:t], t >= 1

        return [tasks[i % len(tasks)].train_example(self, cut, rng) for i in range(n)]

    def validation_examples(self, tasks, cases, seed: int = 0) -> list[Example]:
        """One example per validation case (``dataset.eval_cases("valid")``), tasks in turn; a case a
        task cannot use (rank: SASRec's list misses the target) is left out."""
        tasks = [TASKS[t] for t in check_tasks(tasks)]
        rng = np.random.default_rng(seed + 1_000_003)
        examples = (tasks[i % len(tasks)].val_example(self, case, i, rng) for i, case in enumerate(cases))
        return [ex for ex in examples if ex is not None]

    # -- text --
    def prompt(self, ex: Example, n_history: int | None = None) -> str:
        return TASKS[ex.task].prompt(self, ex, self.max_history if n_history is None else n_history)

    def answer(self, ex: Example) -> str:
        return TASKS[ex.task].answer(self, ex)

    def encode(self, ex: Example, max_length: int) -> dict | None:
        """input_ids + labels of ``ex`` in at most ``max_length`` tokens (oldest history dropped to fit),
        or None when it cannot fit (see each task's ``encode``)."""
        return TASKS[ex.task].encode(self, ex, max_length)

    def encode_all(self, examples, max_length: int) -> tuple[list[dict], int]:
        """Encoded examples and how many were dropped because they could not fit ``max_length``."""
        out = [e for e in (self.encode(ex, max_length) for ex in examples) if e is not None]
        return out, len(examples) - len(out)
