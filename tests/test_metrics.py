import math

import numpy as np
import pytest

from recdemo.eval.metrics import metrics_from_ranks, ranks_of_targets


def test_ranks_count_items_ahead_of_the_target():
    scores = np.array([[0.1, 0.9, 0.5, 0.3],   # target 2: only item 1 is ahead -> rank 1
                       [0.8, 0.2, 0.1, 0.4]])  # target 0: best -> rank 0
    assert ranks_of_targets(scores, [2, 0]).tolist() == [1, 0]


def test_history_items_are_not_candidates():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    # items 1 and 3 score higher than the target 2, but item 1 is in the history
    assert ranks_of_targets(scores, [2], [[1]]).tolist() == [1]
    assert ranks_of_targets(scores, [2], [[1, 3]]).tolist() == [0]


def test_target_repeated_from_history_is_still_ranked():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert ranks_of_targets(scores, [2], [[2, 1]]).tolist() == [1]  # item 3 ahead; item 1 excluded


def test_ties_count_against_the_target():
    scores = np.array([[1.0, 1.0, 1.0, 0.0]])
    assert ranks_of_targets(scores, [1]).tolist() == [2]


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="scores must be"):
        ranks_of_targets(np.zeros((2, 5)), [1])


def test_metrics_by_hand():
    m = metrics_from_ranks([0, 3, 7, 15, 100])
    assert m["users"] == 5
    assert m["hr@5"] == pytest.approx(2 / 5)
    assert m["hr@10"] == pytest.approx(3 / 5)
    assert m["hr@20"] == pytest.approx(4 / 5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(9)) / 5)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(9) + 1 / math.log2(17)) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 8 + 1 / 16 + 1 / 101) / 5)


def test_metrics_of_no_cases_are_zero():
    m = metrics_from_ranks([])
    assert m["users"] == 0 and m["ndcg@10"] == 0.0
