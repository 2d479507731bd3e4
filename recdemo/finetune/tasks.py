"""The fine-tuning tasks: one object per task, in one registry (``TASKS``).

A task knows how to make an example from a cut of a user's *training* sequence
(``train_example``) or from a validation case (``val_example``), how to turn it into token ids and
labels (``encode``), and which loss trains it (``loss``). What every task shares (the dataset, the
tokenizer, the negative sampler, profiles) is the ``builder`` passed in (examples.ExampleBuilder);
the loop only ever sees task names and encoded examples. The CLI and the app list ``task_names()``
and each task's ``label``.

Prompt text always comes from ``recdemo.llm.prompts``, so training sees what inference sends.
Negatives only come from items that occur in training sequences, and never from the user's own
training items: what an example shows can always be traced to training data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from recdemo.data.dataset import LIKED_RATING
from recdemo.finetune.rank_task import encode_rank, rank_candidates, rank_loss
from recdemo.finetune.token_loss import answer_token_loss, answer_token_losses, collate
from recdemo.llm import prompts as P

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
    profile: object = None  # records.Profile (heuristic, from the visible history)
    dense: bool = False  # sequence: every line is a target (training), else only the last (validation)
    sasrec_hit: bool = False  # rank: SASRec's own top-N held the answer (it was not put in)


# -- losses: a task names one; examples that share a loss share a forward where they can --
class AnswerTokens:
    """Cross-entropy of the answer tokens; a micro-batch's examples go through one padded forward."""
    pads = True  # loop.padded_positions: its micro-batch is padded to the longest example

    def train_loss(self, model, encoded: list[dict], pad_id: int, device, sasrec_weight: float = 0.0):
        """(the sum of the examples' own mean losses, tokens run)."""
        batch = collate(encoded, pad_id, device)
        return answer_token_losses(model, batch)[0].sum(), int(batch["attention_mask"].sum())

    def val_loss(self, model, encoded: dict, pad_id: int, device, sasrec_weight: float = 0.0):
        """(loss, weight): one example alone (no padding), weighted by its answer tokens."""
        loss, n = answer_token_loss(model, collate([encoded], pad_id, device))
        return float(loss), n


class ListwiseRank:
    """rank_task.rank_loss: one cross-entropy over a candidate list, one example at a time (each
    runs its own prompt and token trie)."""

    def train_loss(self, model, encoded: list[dict], pad_id: int, device, sasrec_weight: float = 0.0):
        total, tokens = 0.0, 0
        for e in encoded:
            loss, n = rank_loss(model, e, device, sasrec_weight)
            total, tokens = total + loss, tokens + n
        return total, tokens

    def val_loss(self, model, encoded: dict, pad_id: int, device, sasrec_weight: float = 0.0):
        """(loss, 1): the list's one cross-entropy counts as one token."""
        return float(rank_loss(model, encoded, device, sasrec_weight)[0]), 1


ANSWER_TOKENS, LISTWISE_RANK = AnswerTokens(), ListwiseRank()


# -- tasks --
class Task:
    """The default: history -> the next item's title, answer-token loss."""
    name = ""
    label = ""  # for the UI and the CLI's help
    multi_target = False  # the answer is 2-3 consecutive items: the cut leaves room for two
    ranking = False  # trains what a ranker scores: worth the ranking metrics before and after
    one_device = False  # its loss runs past accelerate's DDP wrapper
    loss = ANSWER_TOKENS

    def train_example(self, builder, cut, rng) -> Example:
        """An example from ``cut(multi_target)`` = (user, training sequence, cut point t >= 1)."""
        u, seq, t = cut(self.multi_target)
        items = self.targets(builder, seq, t, rng)
        return self.make(builder, u, seq[:t], items, rng, self.train_label(builder, u, t, rng))

    def val_example(self, builder, case, i: int, rng) -> Example | None:
        """The validation case's example (``i``: its position), or None when it does not fit the task."""
        return self.make(builder, case.user, case.history, [case.target], rng, self.val_label(builder, case, i))

    def targets(self, builder, seq, t: int, rng) -> list[int]:
        return seq[t:t + 1]

    def train_label(self, builder, user: int, t: int, rng) -> bool | None:
        return None

    def val_label(self, builder, case, i: int) -> bool | None:
        return None

    def make(self, builder, user: int, history, items, rng, label: bool | None = None) -> Example:
        ex = Example(task=self.name, user=int(user), history=[int(x) for x in history],
                     items=[int(x) for x in items], label=label)
        self.fill(builder, ex, rng)
        return ex

    def fill(self, builder, ex: Example, rng) -> None:
        """The parts beyond history and answer (profile, candidates)."""

    def prompt(self, builder, ex: Example, n_history: int) -> str:
        """The prompt with the last ``n_history`` items (for the list tasks: a readable rendering;
        ``encode`` builds their real tokens)."""
        return P.render(builder.tok, "genrec", builder.domain, history=builder.history_text(ex, n_history))

    def answer(self, builder, ex: Example) -> str:
        text = P.TITLE_SEPARATOR.join(P.prompt_title(builder.catalog.titles[i]) for i in ex.items)
        return text + P.end_of_answer(builder.tok)

    def encode(self, builder, ex: Example, max_length: int) -> dict | None:
        """input_ids + labels (-100 on the prompt: the loss covers the answer only).

        Too long: drop the oldest history items, one at a time; the answer is never cut. None when
        even one history item does not fit (e.g. a huge candidate list)."""
        answer = builder.tok(self.answer(builder, ex), add_special_tokens=False)["input_ids"]
        for n in range(min(len(ex.history), builder.max_history), 0, -1):
            prompt = builder.tok(self.prompt(builder, ex, n))["input_ids"]
            if len(prompt) + len(answer) <= max_length:
                return {"input_ids": list(prompt) + list(answer),
                        "labels": [-100] * len(prompt) + list(answer), "task": ex.task, "n_history": n}
        return None


class GenRec(Task):
    """GenRec: history (+ profile) -> the next title."""
    name, label = "genrec", "GenRec (next title)"

    def fill(self, builder, ex, rng):
        # the pipeline's heuristic profile: an LLM profile per example would be far too slow
        ex.profile = builder.profile(ex.history[-builder.max_history:])


class Recommend(GenRec):
    """PALR v1: history + profile -> the next 2-3 titles, one per line ("Name the k ...", k = their
    number). Two or more, so that the first title is followed by the line separator, as the ``score``
    and ``palr`` rankers expect at inference (they ask for 10 and score 'title\\n')."""
    name, label = "recommend", "PALR v1 (recommend)"
    multi_target = ranking = True

    def targets(self, builder, seq, t, rng):
        m = int(rng.integers(min(2, builder.max_targets), builder.max_targets + 1))
        return seq[t:t + m]

    def prompt(self, builder, ex, n_history):
        return P.render(builder.tok, "palr_recommend", builder.domain, profile=P.format_profile(ex.profile),
                        k=len(ex.items), history=builder.history_text(ex, n_history))


class RecommendRetrieval(Recommend):
    """PALR v2: the same, but the answer is picked from a candidate list (the targets + negatives
    similar to them, shuffled). Training lists are shorter than the 50 SASRec candidates used at
    inference (``n_candidates``, default 20) because every candidate costs ~12 tokens and CPU training
    time grows with sequence length."""
    name, label = "recommend_retrieval", "PALR v2 (recommend from candidates)"

    def fill(self, builder, ex, rng):
        super().fill(builder, ex, rng)
        negs = builder.negatives(ex.items, builder.train[ex.user], max(0, builder.n_candidates - len(ex.items)), rng)
        ex.candidates = [int(x) for x in rng.permutation(ex.items + negs)]

    def prompt(self, builder, ex, n_history):
        return P.render(builder.tok, "palr_rank", builder.domain, profile=P.format_profile(ex.profile),
                        candidates=P.format_candidates(builder.catalog, ex.candidates), k=len(ex.items),
                        history=builder.history_text(ex, n_history))


class TallRec(GenRec):
    """TALLRec: "Will the user enjoy X?" -> Yes/No (liked = rating >= 4; without ratings the true
    next item is Yes and a sampled item is No)."""
    name, label = "tallrec", "TALLRec (yes/no)"

    def train_label(self, builder, user, t, rng):
        if builder.train_ratings is not None:
            return bool(builder.train_ratings[user][t] >= LIKED_RATING)
        return bool(rng.random() < 0.5)

    def val_label(self, builder, case, i):
        if builder.dataset.ratings is not None:
            return bool(builder.dataset.ratings[case.user][len(case.history)] >= LIKED_RATING)
        return i % 2 == 0

    def fill(self, builder, ex, rng):
        super().fill(builder, ex, rng)
        if ex.label is False and builder.train_ratings is None:
            ex.items = builder.negatives(ex.items, builder.train[ex.user], 1, rng)[:1] or ex.items

    def prompt(self, builder, ex, n_history):
        return P.render(builder.tok, "tallrec", builder.domain, target=P.prompt_title(builder.catalog.titles[ex.items[0]]),
                        history=builder.history_text(ex, n_history))

    def answer(self, builder, ex):
        return (P.ANSWER_YES if ex.label else P.ANSWER_NO) + P.end_of_answer(builder.tok)


class Sequence(Task):
    """A window of <= 21 consecutive training items as the ``score`` ranker's open numbered list;
    every title after the first is a target (loss on its tokens), as every position is in SASRec's
    training. One ~250-token window gives ~20 targets where the other tasks give one, which matters
    when a CPU trains at a few hundred tokens/s. Validation examples score only the held-out item's
    line, after the user's last <= 20 training items, exactly as the ranker does."""
    name, label = "sequence", "Next line of the history (score ranker)"
    ranking = True

    def train_example(self, builder, cut, rng):
        ex = super().train_example(builder, cut, rng)  # the last max_history items before the cut, and seq[t]
        ex.dense = True
        return ex

    def encode(self, builder, ex, max_length):
        """The window as the score ranker's list; labels on the target lines (see ``Example.dense``)."""
        head = P.render_open(builder.tok, "sequence", builder.domain)
        for n in range(min(len(ex.history), builder.max_history), -1, -1):
            window = (ex.history[-n:] if n else []) + ex.items
            pieces = P.sequence_pieces(builder.catalog, window, max_items=len(window), open_next=False)
            ids, piece_of = P.encode_pieces(builder.tok, head, pieces)
            if len(ids) > max_length:
                continue  # drop the oldest item and try again
            last = len(pieces) - 1  # the final title piece
            targets = {j for j, (_, item) in enumerate(pieces) if item is not None and j >= 3} if ex.dense else {last}
            labels = [t if j in targets else -100 for t, j in zip(ids, piece_of)]
            return {"input_ids": ids, "labels": labels, "task": ex.task, "n_history": n}
        return None


class Rank(Task):
    """The ``score`` ranker's prompt and SASRec's top-N candidates for the cut's history; the loss is
    the listwise cross-entropy of the true next item among them (rank_task.py). Needs SASRec."""
    name, label = "rank", "Pick the next item from SASRec's top-50 (score ranker)"
    ranking = one_device = True
    loss = LISTWISE_RANK

    def train_example(self, builder, cut, rng):
        # Only cuts whose next item is in SASRec's list, as LlamaRec trains: elsewhere no reranker
        # can help, and a target put in by hand is one SASRec scores lowest.
        for _ in range(RANK_TRIES + 1):
            ex = super().train_example(builder, cut, rng)
            if ex.sasrec_hit:
                break
        return ex

    def val_example(self, builder, case, i, rng):
        ex = super().val_example(builder, case, i, rng)
        return ex if ex.sasrec_hit else None  # as in training: lists that hold the target

    def fill(self, builder, ex, rng):
        ex.candidates, ex.sasrec_hit = rank_candidates(
            builder.retriever, ex.history, ex.items[0], builder.rank_candidates,
            banned=builder.dataset.sequences[ex.user], allowed=builder.in_pool)

    def encode(self, builder, ex, max_length):
        return encode_rank(builder, ex, max_length)


TASKS: dict[str, Task] = {t.name: t for t in (Recommend(), RecommendRetrieval(), TallRec(), GenRec(), Sequence(),
                                              Rank())}


def task_names() -> list[str]:
    return list(TASKS)


def check_tasks(tasks) -> list[str]:
    """Task names from a list or a comma string, each known; a ValueError naming the unknown ones."""
    tasks = [str(t).strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks or ()) if str(t).strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown fine-tuning task(s) {', '.join(unknown) or '(none given)'}: "
                         f"choose from {', '.join(TASKS)}")
    return tasks
