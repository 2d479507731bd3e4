import numpy as np
import pytest

from recdemo.retrieval.index import ItemIndex


def test_faiss_equals_dense_scoring():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(500, 16)).astype(np.float32)
    index = ItemIndex(emb)
    for _ in range(5):
        q = rng.normal(size=16).astype(np.float32)
        ids, scores = index.search(q, 20)
        dense = emb @ q
        assert ids.tolist() == np.argsort(-dense)[:20].tolist()
        assert np.allclose(scores, dense[ids], atol=1e-4)


def test_excluded_items_are_skipped_and_k_kept():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    q = rng.normal(size=8).astype(np.float32)
    best = np.argsort(-(emb @ q))
    ids, _ = ItemIndex(emb).search(q, 10, exclude=best[:5])
    assert ids.tolist() == best[5:15].tolist()


def test_k_larger_than_the_catalog():
    emb = np.eye(4, dtype=np.float32)
    ids, scores = ItemIndex(emb).search(np.array([1, 2, 3, 4], dtype=np.float32), 10, exclude=[3])
    assert ids.tolist() == [2, 1, 0] and scores.tolist() == [3.0, 2.0, 1.0]


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="non-empty"):
        ItemIndex(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="dimensions"):
        ItemIndex(np.eye(4)).search(np.zeros(3), 2)
