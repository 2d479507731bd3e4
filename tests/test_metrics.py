import math

import numpy as np
import pytest

from recdemo.metrics import metrics_from_ranks, ranks_of_targets


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


def test_ratio_interval_is_the_paired_lift():
    from recdemo.metrics import ratio_interval

    base = [0, 3, 12, 1, 50, 7, 2, 30] * 10
    assert ratio_interval(base, base) == (1.0, 1.0)  # the same list: no lift, no spread
    better = [max(r - 1, 0) if r < 10 else r for r in base]  # every hit moves up one place
    lo, hi = ratio_interval(better, base)
    point = metrics_from_ranks(better)["ndcg@10"] / metrics_from_ranks(base)["ndcg@10"]
    assert 1.0 < lo <= point <= hi
    noisy = [0 if i % 2 else 40 for i in range(80)]  # half the users hit at 1, half miss
    lo2, hi2 = ratio_interval(noisy, base)
    assert hi2 - lo2 > hi - lo  # an unpaired-looking change is far less certain
    assert ratio_interval([3, 4], [20, 30]) is None  # the base never hits: no ratio
    with pytest.raises(ValueError, match="same cases"):
        ratio_interval([1, 2], [1])


def test_mean_interval_holds_the_mean_and_narrows_with_more_users():
    from recdemo.metrics import mean_interval

    ranks = [0, 3, 12, 1, 50, 7, 2, 30]
    lo, hi = mean_interval(ranks * 5)
    lo_big, hi_big = mean_interval(ranks * 500)
    mean = metrics_from_ranks(ranks)["ndcg@10"]
    assert lo < mean < hi and lo_big < mean < hi_big
    assert hi_big - lo_big < (hi - lo) / 5  # 100x the users: about a tenth of the width
    assert mean_interval([]) is None
