"""Fine-tuning examples for the four tasks, built from training sequences only.

Every training example cuts one user's *training* sequence (``dataset.train_sequences()``: the
last two items of each user, validation and test, are not in it) at a random point: the items
before the cut are the history, the items after it are the answer. Validation examples come from
``dataset.eval_cases("valid")`` and are only ever scored, never trained on.

Tasks (prompt text always comes from ``recdemo.llm.prompts``):
- ``recommend`` (PALR v1): history + profile -> the next 2-3 titles, one per line ("Name the k ...",
  k = their number). Two or more, so that the first title is followed by the line separator, as
  the ``score`` and ``palr`` rankers expect at inference (they ask for 10 and score 'title\n').
- ``recommend_retrieval`` (PALR v2): the same, but the answer is picked from a candidate list
  (the targets + negatives similar to them, shuffled). Training lists are shorter than the 50 SASRec
  candidates used at inference (``n_candidates``, default 20) because every candidate costs ~12
  tokens and CPU training time grows with sequence length.
- ``tallrec``: "Will the user enjoy X?" -> Yes/No (liked = rating >= 4; without ratings the true
  next item is Yes and a sampled item is No).
- ``genrec``: history -> the next title.
- ``sequence``: a window of <= 21 consecutive training items as the ``score`` ranker's open
  numbered list; every title after the first is a target (loss on its tokens), as every position
  is in SASRec's training. One ~250-token window gives ~20 targets where the other tasks give one,
  which matters when a CPU trains at a few hundred tokens/s. Validation examples score only the
  held-out item's line, after the user's last <= 20 training items, exactly as the ranker does.
- ``rank``: the ``score`` ranker's prompt and SASRec's top-N candidates for the cut's history; the
  loss is the listwise cross-entropy of the true next item among them (ft_rank.py). Needs SASRec.

Negatives only come from items that occur in training sequences, and never from the user's own
training items: what an example shows can always be traced to training data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recdemo.data.dataset import LIKED_RATING
from recdemo.llm import prompts as P

TASKS = ("recommend", "recommend_retrieval", "tallrec", "genrec", "sequence", "rank")
MIN_HISTORY = 3  # a cut leaves at least this many history items (when the sequence allows)
RANK_TRIES = 30  # rank: cuts drawn per example until SASRec's list holds the next item


@dataclass
class Example:
    task: str
    user: int  # position in dataset.users
    history: list[int]  # catalog indices before the cut, oldest first (prompts show the last max_history)
    items: list[int]  # answer items in time order; tallrec: the item asked about
    candidates: list[int] = field(default_factory=list)  # recommend_retrieval: shuffled targets + negatives;
    # rank: SASRec's top-N for the history
    label: bool | None = None  # tallrec: does the user like ``items[0]``?
    profile: object = None  # types.Profile (heuristic, from the visible history)
    dense: bool = False  # sequence: every line is a target (training), else only the last (validation)
    sasrec_hit: bool = False  # rank: SASRec's own top-N held the answer (it was not put in)


def check_tasks(tasks) -> list[str]:
    tasks = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown fine-tuning task(s) {', '.join(unknown) or '(none given)'}: "
                         f"choose from {', '.join(TASKS)}")
    return tasks


def make_profile(catalog, history):
    """The PIPELINE's heuristic profile (no LLM: an LLM profile per example would be far too slow)."""
    from recdemo.llm.profile import heuristic_profile
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

    # -- examples --
    def _example(self, task: str, user: int, history, items, rng, label=None) -> Example:
        history = [int(x) for x in history]
        ex = Example(task=task, user=int(user), history=history, items=[int(x) for x in items], label=label)
        if task == "sequence":
            return ex  # no profile in this prompt
        if task == "rank":
            from recdemo.finetune.rank_task import rank_candidates
            ex.candidates, ex.sasrec_hit = rank_candidates(
                self.retriever, history, ex.items[0], self.rank_candidates,
                banned=self.dataset.sequences[user], allowed=self.in_pool)
            return ex
        ex.profile = make_profile(self.catalog, history[-self.max_history:])
        if task == "recommend_retrieval":
            own = self.train[user]
            negs = self.negatives(ex.items, own, max(0, self.n_candidates - len(ex.items)), rng)
            ex.candidates = [int(x) for x in rng.permutation(ex.items + negs)]
        if task == "tallrec" and label is False and self.train_ratings is None:
            ex.items = self.negatives(ex.items, self.train[user], 1, rng)[:1] or ex.items
        return ex

    def training_examples(self, tasks, n: int, seed: int = 0) -> list[Example]:
        """``n`` examples, tasks taken in turn; each from a random user and a random cut point."""
        tasks = check_tasks(tasks)
        rng = np.random.default_rng(seed)
        users = [u for u, s in enumerate(self.train) if len(s) >= 2]
        if not users:
            raise ValueError("no user has two or more training interactions: nothing to fine-tune on")
        out = []

        def cut(multi: bool) -> tuple[int, np.ndarray, int]:
            u = users[int(rng.integers(len(users)))]
            seq = self.train[u]
            hi = len(seq) - 2 if multi and len(seq) >= 3 else len(seq) - 1  # room for 2 targets if possible
            return u, seq, int(rng.integers(min(MIN_HISTORY, hi), hi + 1))  # history = seq[:t], t >= 1

        for i in range(n):
            task = tasks[i % len(tasks)]
            multi = task in ("recommend", "recommend_retrieval")
            u, seq, t = cut(multi)
            if multi:
                m = int(rng.integers(min(2, self.max_targets), self.max_targets + 1))
                items = seq[t:t + m]
            else:
                items = seq[t:t + 1]
            label = None
            if task == "rank":
                # Only cuts whose next item is in SASRec's list, as LlamaRec trains: elsewhere no
                # reranker can help, and a target put in by hand is one SASRec scores lowest.
                ex = self._example(task, u, seq[:t], items, rng)
                for _ in range(RANK_TRIES):
                    if ex.sasrec_hit:
                        break
                    u, seq, t = cut(False)
                    ex = self._example(task, u, seq[:t], seq[t:t + 1], rng)
                out.append(ex)
                continue
            if task == "sequence":  # the window: the last max_history items before the cut, and seq[t]
                out.append(self._example(task, u, seq[:t], items, rng))
                out[-1].dense = True
                continue
            if task == "tallrec":
                if self.train_ratings is not None:
                    label = bool(self.train_ratings[u][t] >= LIKED_RATING)
                else:
                    label = bool(rng.random() < 0.5)
            out.append(self._example(task, u, seq[:t], items, rng, label))
        return out

    def validation_examples(self, tasks, cases, seed: int = 0) -> list[Example]:
        """One example per validation case (``dataset.eval_cases("valid")``), tasks in turn."""
        tasks = check_tasks(tasks)
        rng = np.random.default_rng(seed + 1_000_003)
        out = []
        for i, case in enumerate(cases):
            task = tasks[i % len(tasks)]
            label = None
            if task == "tallrec":
                if self.dataset.ratings is not None:
                    label = bool(self.dataset.ratings[case.user][len(case.history)] >= LIKED_RATING)
                else:
                    label = i % 2 == 0
            ex = self._example(task, case.user, case.history, [case.target], rng, label)
            if task != "rank" or ex.sasrec_hit:  # rank: as in training, lists that hold the target
                out.append(ex)
        return out

    # -- text --
    def prompt(self, ex: Example, n_history: int | None = None) -> str:
        n = self.max_history if n_history is None else n_history
        fields = {"history": P.format_history(self.catalog, ex.history, max_items=n,
                                              with_attributes=self.with_attributes)}
        if ex.task == "recommend":
            return P.render(self.tok, "palr_recommend", self.domain, profile=P.format_profile(ex.profile),
                            k=len(ex.items), **fields)
        if ex.task == "recommend_retrieval":
            return P.render(self.tok, "palr_rank", self.domain, profile=P.format_profile(ex.profile),
                            candidates=P.format_candidates(self.catalog, ex.candidates), k=len(ex.items),
                            **fields)
        if ex.task == "tallrec":
            return P.render(self.tok, "tallrec", self.domain, target=self.catalog.titles[ex.items[0]], **fields)
        return P.render(self.tok, "genrec", self.domain, **fields)

    def answer(self, ex: Example) -> str:
        if ex.task == "tallrec":
            text = P.ANSWER_YES if ex.label else P.ANSWER_NO
        else:
            text = P.TITLE_SEPARATOR.join(self.catalog.titles[i] for i in ex.items)
        return text + P.end_of_answer(self.tok)

    def encode_sequence(self, ex: Example, max_length: int) -> dict | None:
        """The window as the score ranker's list; labels on the target lines (see ``Example.dense``)."""
        head = P.render_open(self.tok, "sequence", self.domain)
        for n in range(min(len(ex.history), self.max_history), -1, -1):
            window = (ex.history[-n:] if n else []) + ex.items
            pieces = P.sequence_pieces(self.catalog, window, max_items=len(window), open_next=False)
            ids, piece_of = P.encode_pieces(self.tok, head, pieces)
            if len(ids) > max_length:
                continue  # drop the oldest item and try again
            last = len(pieces) - 1  # the final title piece
            targets = {j for j, (_, item) in enumerate(pieces) if item is not None and j >= 3} if ex.dense else {last}
            labels = [t if j in targets else -100 for t, j in zip(ids, piece_of)]
            return {"input_ids": ids, "labels": labels, "task": ex.task, "n_history": n}
        return None

    def encode(self, ex: Example, max_length: int) -> dict | None:
        """input_ids + labels (-100 on the prompt: the loss covers the answer only).

        Too long: drop the oldest history items, one at a time; the answer is never cut. None when
        even one history item does not fit (e.g. a huge candidate list)."""
        if ex.task == "sequence":
            return self.encode_sequence(ex, max_length)
        if ex.task == "rank":
            from recdemo.finetune.rank_task import encode_rank
            return encode_rank(self, ex, max_length)
        answer = self.tok(self.answer(ex), add_special_tokens=False)["input_ids"]
        for n in range(min(len(ex.history), self.max_history), 0, -1):
            prompt = self.tok(self.prompt(ex, n))["input_ids"]
            if len(prompt) + len(answer) <= max_length:
                return {"input_ids": list(prompt) + list(answer),
                        "labels": [-100] * len(prompt) + list(answer), "task": ex.task, "n_history": n}
        return None

    def encode_all(self, examples, max_length: int) -> tuple[list[dict], int]:
        """Encoded examples and how many were dropped because they could not fit ``max_length``."""
        out = [e for e in (self.encode(ex, max_length) for ex in examples) if e is not None]
        return out, len(examples) - len(out)
