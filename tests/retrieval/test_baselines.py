import numpy as np
import pytest

from recdemo.retrieval.baselines import ItemKNN, Popularity

# users' training sequences over 5 items
SEQS = [np.array([0, 1, 2]), np.array([0, 1]), np.array([1, 3]), np.array([0, 0, 4])]


def test_popularity_counts_training_interactions():
    pop = Popularity(SEQS, 5)
    assert pop.score_all([1]).tolist() == [4, 3, 1, 1, 1]
    assert pop.score_batch([[0], [1, 2]]).shape == (2, 5)


def test_cooccurrence_counts_users_with_both_items():
    knn = ItemKNN(SEQS, 5)
    assert knn.related(0, 1) == 2  # users 0 and 1
    assert knn.related(1, 3) == 1
    assert knn.related(2, 3) == 0
    assert knn.related(0, 4) == 1  # a repeat inside one user counts once
    assert knn.cooccurrence(1).tolist() == [2, 3, 1, 1, 0]


def test_scores_are_summed_cosines_by_hand():
    knn = ItemKNN(SEQS, 5)
    # users per item: 0 -> {0,1,3}, 1 -> {0,1,2}, 2 -> {0}, 3 -> {2}, 4 -> {3}
    s = knn.score_all([0, 3])
    cos = lambda co, a, b: co / np.sqrt(a * b)
    assert s[1] == pytest.approx(cos(2, 3, 3) + cos(1, 3, 1))
    assert s[2] == pytest.approx(cos(1, 3, 1))
    assert s[4] == pytest.approx(cos(1, 3, 1))


def test_only_the_last_items_count():
    knn = ItemKNN(SEQS, 5, last=1)
    assert np.allclose(knn.score_all([3, 2]), knn.score_all([2]))
    assert not np.allclose(knn.score_all([2, 3]), knn.score_all([2]))


def test_items_nobody_has_score_zero():
    knn = ItemKNN(SEQS, 6)  # item 5 never occurs
    assert knn.score_all([0, 1])[5] == 0.0
    assert np.isfinite(knn.score_all([5])).all()
