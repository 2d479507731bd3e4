"""Fine-tuning examples: no leakage of validation/test items, label masking, truncation, task formats."""
from __future__ import annotations

import numpy as np
import pytest

from recdemo.data import Catalog, Dataset
from recdemo.llm import prompts as P
from recdemo.finetune.examples import ExampleBuilder
from recdemo.finetune.tasks import TASKS, check_tasks
from conftest import TOY_GENRES, make_toy_dataset, toy_titles


class FakeRetriever:
    def __init__(self, n_items, seed=0):
        self.item_embeddings = np.random.default_rng(seed).normal(size=(n_items, 8)).astype(np.float32)

    def top_k(self, history, k=50):
        """Every item not in the history (held-out ones included), nearest to the last one first."""
        scores = self.item_embeddings @ self.item_embeddings[int(history[-1])]
        order = [int(i) for i in np.argsort(-scores) if int(i) not in set(int(h) for h in history)]
        return [(i, float(scores[i])) for i in order[:k]]


def held_out_dataset():
    """Every user's last two items (validation, test) are items nobody else ever touches."""
    n_shared, n_users = 30, 10
    titles = toy_titles(n_shared) + [f"Secret Holdout {k} ({2100 + k})" for k in range(2 * n_users)]
    attrs = [(TOY_GENRES[i % 6],) for i in range(len(titles))]
    catalog = Catalog(ids=[str(i) for i in range(len(titles))], titles=titles, attributes=attrs,
                      attribute_name="genres")
    rng = np.random.default_rng(3)
    seqs, rates = [], []
    for u in range(n_users):
        body = list(rng.choice(n_shared, size=int(rng.integers(5, 12)), replace=False))
        seqs.append(np.array(body + [n_shared + 2 * u, n_shared + 2 * u + 1], dtype=np.int64))
        rates.append(rng.integers(1, 6, size=len(seqs[-1])).astype(np.float32))
    ds = Dataset(name="holdout", catalog=catalog, users=[str(u) for u in range(n_users)], sequences=seqs,
                 ratings=rates)
    return ds, set(range(n_shared, len(titles)))


@pytest.mark.parametrize("with_retriever", [False, True])
def test_training_examples_never_contain_validation_or_test_items(tiny_tokenizer, with_retriever):
    ds, held = held_out_dataset()
    retriever = FakeRetriever(ds.n_items) if with_retriever else None
    builder = ExampleBuilder(ds, tiny_tokenizer, retriever, n_candidates=12, rank_candidates=12)
    tasks = [t for t in TASKS if with_retriever or t != "rank"]  # rank ranks SASRec's lists
    examples = builder.training_examples(tasks, 200, seed=1)
    assert {e.task for e in examples} == set(tasks)
    held_titles = [ds.catalog.titles[i] for i in held]
    for ex in examples:
        used = set(ex.history) | set(ex.items) | set(ex.candidates)
        assert not used & held, (ex.task, used & held)
        text = builder.prompt(ex) + builder.answer(ex)
        assert "Secret Holdout" not in text
        # answer items come from the user's own training sequence, right after the history
        if not (ex.task == "tallrec" and ex.label is False and ds.ratings is None):
            seq = list(ds.train_sequences()[ex.user])
            assert seq[:len(ex.history)] == ex.history
            assert seq[len(ex.history):len(ex.history) + len(ex.items)] == ex.items
    assert held_titles  # the check above had something to look for


def test_validation_examples_target_the_validation_item(tiny_tokenizer):
    ds, held = held_out_dataset()
    builder = ExampleBuilder(ds, tiny_tokenizer)
    cases = ds.eval_cases("valid")
    val = builder.validation_examples(["genrec"], cases)
    for case, ex in zip(cases, val):
        assert ex.items == [case.target] and case.target in held
        assert ex.history == [int(x) for x in ds.train_sequences()[case.user]]


def test_labels_mask_the_prompt_and_keep_the_whole_answer(tiny_tokenizer, toy_dataset):
    builder = ExampleBuilder(toy_dataset, tiny_tokenizer)
    single = [t for t in TASKS if t not in ("sequence", "rank")]  # sequence: every line is an answer; rank: no text
    for ex in builder.training_examples(single, 8, seed=0):
        enc = builder.encode(ex, max_length=4096)
        ids, labels = enc["input_ids"], enc["labels"]
        prompt_ids = tiny_tokenizer(builder.prompt(ex))["input_ids"]
        n = len(prompt_ids)
        assert ids[:n] == prompt_ids
        assert all(x == -100 for x in labels[:n])
        assert labels[n:] == ids[n:] and all(x != -100 for x in labels[n:])
        answer = tiny_tokenizer.decode(labels[n:])
        assert answer == builder.answer(ex)
        assert answer.endswith(P.end_of_answer(tiny_tokenizer))


def test_truncation_drops_oldest_history_never_the_answer(tiny_tokenizer, toy_dataset):
    builder = ExampleBuilder(toy_dataset, tiny_tokenizer)
    ex = next(e for e in builder.training_examples(["recommend"], 50, seed=2) if len(e.history) >= 6)
    full = builder.encode(ex, 4096)
    limit = len(full["input_ids"]) - 15
    short = builder.encode(ex, limit)
    assert short is not None and len(short["input_ids"]) <= limit
    assert short["n_history"] < full["n_history"]
    answer_ids = tiny_tokenizer(builder.answer(ex), add_special_tokens=False)["input_ids"]
    assert short["input_ids"][-len(answer_ids):] == answer_ids
    text = tiny_tokenizer.decode(short["input_ids"])
    assert ds_title(toy_dataset, ex.history[-1]) in text  # the most recent item stays
    assert builder.encode(ex, len(answer_ids) + 5) is None  # nothing fits: dropped, not cut


def ds_title(ds, i):
    return ds.catalog.titles[i]


def test_retrieval_candidates_hold_targets_and_exclude_own_items(tiny_tokenizer, toy_dataset):
    builder = ExampleBuilder(toy_dataset, tiny_tokenizer, FakeRetriever(toy_dataset.n_items), n_candidates=10)
    for ex in builder.training_examples(["recommend_retrieval"], 30, seed=4):
        assert len(ex.candidates) == len(set(ex.candidates)) == 10
        assert set(ex.items) <= set(ex.candidates)
        own = set(int(x) for x in toy_dataset.train_sequences()[ex.user])
        assert not (set(ex.candidates) - set(ex.items)) & own
        prompt = builder.prompt(ex)
        assert "### Candidates for Recommendation" in prompt
        assert builder.answer(ex) == "\n".join(ds_title(toy_dataset, i) for i in ex.items) + "<|im_end|>"
        assert 2 <= len(ex.items) <= 3  # the first title is followed by the line separator


def test_hard_negatives_follow_the_embeddings(tiny_tokenizer, toy_dataset):
    emb = np.eye(toy_dataset.n_items, dtype=np.float32)
    builder = ExampleBuilder(toy_dataset, tiny_tokenizer, hard_fraction=1.0)
    similar = [int(i) for i in builder.pool if i != 3][:14]  # 14 items identical to item 3: the hard pool
    emb[similar] = emb[3]
    builder = ExampleBuilder(toy_dataset, tiny_tokenizer, type("R", (), {"item_embeddings": emb})(),
                             hard_fraction=1.0)
    for seed in range(5):
        got = builder.negatives([3], exclude=[similar[0]], n=3, rng=np.random.default_rng(seed))
        assert len(got) == 3 and set(got) <= set(similar[1:])


def test_tallrec_labels_follow_ratings_or_sampled_negatives(tiny_tokenizer):
    ds = make_toy_dataset()
    builder = ExampleBuilder(ds, tiny_tokenizer)
    for ex in builder.training_examples(["tallrec"], 40, seed=5):
        t = len(ex.history)
        assert ex.label == bool(ds.train_ratings()[ex.user][t] >= 4)
        assert builder.answer(ex) == ("Yes" if ex.label else "No") + "<|im_end|>"
    plain = make_toy_dataset(ratings=False)
    builder = ExampleBuilder(plain, tiny_tokenizer)
    labels = []
    for ex in builder.training_examples(["tallrec"], 40, seed=5):
        own = set(int(x) for x in plain.train_sequences()[ex.user])
        labels.append(ex.label)
        if ex.label:
            assert ex.items[0] == plain.train_sequences()[ex.user][len(ex.history)]
        else:
            assert ex.items[0] not in own
    assert 0 < sum(labels) < len(labels)


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="choose from recommend"):
        check_tasks("recommend,bogus")
    assert check_tasks(" genrec , tallrec") == ["genrec", "tallrec"]


def _labelled_text(tok, enc):
    return tok.decode([t for t in enc["labels"] if t != -100])


def test_sequence_training_window_targets_every_line_but_the_first(tiny_tokenizer, toy_dataset):
    builder = ExampleBuilder(toy_dataset, tiny_tokenizer)
    for ex in builder.training_examples(["sequence"], 12, seed=1):
        assert ex.dense and len(ex.items) == 1
        window = (ex.history + ex.items)[-(builder.max_history + 1):]
        enc = builder.encode(ex, 4096)
        expected = "".join(P.sequence_answer(toy_dataset.catalog.titles[i]) for i in window[1:])
        assert _labelled_text(tiny_tokenizer, enc) == expected  # titles only: no numbers, no prompt
        assert tiny_tokenizer.decode(enc["input_ids"]).count(". ") >= len(window)  # every line numbered


def test_sequence_validation_scores_the_held_out_line_on_the_rankers_prompt(tiny_llm, toy_dataset):
    from recdemo.llm.rankers.score import ScoreRanker
    from recdemo.records import RerankRequest
    tok = tiny_llm.tokenizer
    builder = ExampleBuilder(toy_dataset, tok)
    ranker = ScoreRanker(tiny_llm, toy_dataset, fuse=False)
    cases = toy_dataset.eval_cases("valid")
    for case, ex in zip(cases, builder.validation_examples(["sequence"], cases)):
        enc = builder.encode(ex, 4096)
        target = tok(P.sequence_answer(toy_dataset.catalog.titles[case.target]), add_special_tokens=False)["input_ids"]
        assert enc["labels"][-len(target):] == target and all(x == -100 for x in enc["labels"][:-len(target)])
        # training and inference see the same tokens: the ranker's prompt, then the answer line
        prompt = ranker.prompt_ids(RerankRequest(history=list(case.history), candidates=[], profile=None, k=1))
        assert enc["input_ids"] == prompt + target


def test_sequence_window_drops_oldest_items_to_fit(tiny_tokenizer, toy_dataset):
    builder = ExampleBuilder(toy_dataset, tiny_tokenizer)
    ex = next(e for e in builder.training_examples(["sequence"], 50, seed=2) if len(e.history) >= 6)
    full = builder.encode(ex, 4096)
    short = builder.encode(ex, len(full["input_ids"]) - 10)
    assert short["n_history"] < full["n_history"]
    assert tiny_tokenizer.decode(short["input_ids"]).rstrip().endswith(toy_dataset.catalog.titles[ex.items[0]])
