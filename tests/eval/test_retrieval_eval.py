import numpy as np
import pytest

from recdemo.eval.retrieval_eval import evaluate_models, sample_negatives

KEYS = ("hr@10", "ndcg@10", "hr@5", "ndcg@5", "hr@20", "ndcg@20", "mrr", "users")


def oracle(cases_by_history):
    """A scorer that puts each case's target first (and item 0 second)."""
    def score(histories):
        out = np.zeros((len(histories), 200))
        for row, h in enumerate(histories):
            out[row, cases_by_history[tuple(h)]] = 10.0
        return out
    return score


class Case:
    def __init__(self, history, target):
        self.history, self.target = np.asarray(history), target


class FakeDataset:
    n_items = 200

    def __init__(self, cases):
        self.cases = cases

    def eval_cases(self, split):
        return self.cases


def test_negatives_avoid_history_and_target_and_are_seeded():
    cases = [Case(list(range(150)), 160), Case([1, 2], 3)]
    neg = sample_negatives(cases, 300, seed=5)
    assert neg.shape == (2, 100)
    for row, c in zip(neg, cases):
        assert len(set(row.tolist())) == 100
        assert not set(row.tolist()) & (set(c.history.tolist()) | {c.target})
    assert np.array_equal(neg, sample_negatives(cases, 300, seed=5))
    assert not np.array_equal(neg, sample_negatives(cases, 300, seed=6))
    with pytest.raises(ValueError, match="outside a history"):
        sample_negatives([Case(list(range(150)), 160)], 200)


def test_oracle_scores_perfectly_and_its_negation_badly():
    cases = [Case([u, u + 1], u + 2) for u in range(0, 60, 3)]
    ds = FakeDataset(cases)
    lookup = {tuple(c.history.tolist()): c.target for c in cases}
    good = oracle(lookup)
    result = evaluate_models({"good": good, "bad": lambda h: -good(h)}, ds, protocols=("full", "sampled100"))
    for p in ("full", "sampled100"):
        assert result[p]["good"]["ndcg@10"] == 1.0 and result[p]["good"]["users"] == len(cases)
        assert result[p]["bad"]["hr@20"] == 0.0
    assert all(k in result["full"]["good"] for k in KEYS)


def test_unmasked_ranks_the_history_too():
    """A scorer that rates every earlier item above the target: masked, the target is first;
    unmasked, each distinct earlier item (other than a repeated target) sits ahead of it."""
    cases = [Case([5, 6, 7], 9), Case([1, 2, 2, 3, 4, 8, 10, 11, 12, 13, 14, 15], 20), Case([30, 9, 31], 9)]

    def history_first(histories):
        out = np.zeros((len(histories), 200))
        for row, h in enumerate(histories):
            out[row, [c.target for c in cases if tuple(c.history) == tuple(h)][0]] = 1.0
            out[row, np.asarray(h)] = 2.0
        return out
    result = evaluate_models({"m": history_first}, FakeDataset(cases), protocols=("full", "unmasked"))
    assert result["full"]["m"]["ndcg@10"] == 1.0
    # ranks 3, 11 and 2 (the repeated target 9 is not ahead of itself, 30 and 31 are)
    assert result["unmasked"]["m"]["mrr"] == pytest.approx((1 / 4 + 1 / 12 + 1 / 3) / 3)
    assert result["unmasked"]["m"]["hr@10"] == pytest.approx(2 / 3)
