import numpy as np
import pytest
import torch

from recdemo.config import RetrievalConfig
from recdemo.errors import ModelNotFound
from recdemo.retrieval.checkpoint import save_checkpoint
from recdemo.retrieval.retriever import Retriever
from recdemo.retrieval.sasrec import SASRec, SASRecConfig


def make_retriever(dataset, text_index=None, seed=0):
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=dataset.n_items, maxlen=8, hidden=16, dropout=0.0))
    return Retriever(model, dataset, text_index=text_index)


class StubTextIndex:
    def __init__(self):
        self.calls = []

    def similar(self, history, k):
        self.calls.append((list(history), k))
        return [(i, 1.0 - i / 100) for i in range(k)]


def test_top_k_excludes_history_and_is_sorted(cycle_dataset):
    r = make_retriever(cycle_dataset)
    history = [0, 1, 2, 3]
    top = r.top_k(history, k=10)
    ids = [i for i, _ in top]
    scores = [s for _, s in top]
    assert len(top) == 10 and len(set(ids)) == 10
    assert not set(ids) & set(history)
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(i, int) and isinstance(s, float) for i, s in top)


def test_top_k_equals_dense_scoring(cycle_dataset):
    r = make_retriever(cycle_dataset)
    history = [5, 6, 7]
    dense = r.score_all(history)
    dense[history] = -np.inf
    expected = np.argsort(-dense)[:12].tolist()
    top = r.top_k(history, k=12)
    assert [i for i, _ in top] == expected
    assert np.allclose([s for _, s in top], dense[expected], atol=1e-4)
    assert r.item_embeddings.shape == (cycle_dataset.n_items, 16)


def test_score_batch_matches_score_all(cycle_dataset):
    r = make_retriever(cycle_dataset)
    batch = r.score_batch([[1, 2], [3]])
    assert np.allclose(batch[1], r.score_all([3]), atol=1e-5)


def test_empty_history_falls_back_to_popularity(cycle_dataset):
    r = make_retriever(cycle_dataset)
    assert r.method_for([]) == "popularity"
    counts = r.popularity.counts
    top = r.top_k([], k=5)
    assert [s for _, s in top] == sorted(counts, reverse=True)[:5]


def test_untrained_items_use_the_text_index(cycle_dataset):
    # item 35 only ever occurs as a held-out item: SASRec never read it during training
    seqs = [np.append(s[:-2], [35, s[-1]]) if u == 0 else s for u, s in enumerate(cycle_dataset.sequences)]
    seqs = [s[s != 35] if u > 0 else s for u, s in enumerate(seqs)]
    from dataclasses import replace
    ds = replace(cycle_dataset, sequences=seqs)
    text = StubTextIndex()
    r = make_retriever(ds, text_index=text)
    assert not r.trained_items[35]
    assert r.method_for([35]) == "text"
    top = r.top_k([35], k=5)
    assert text.calls and text.calls[0][0] == [35]
    assert len(top) == 5 and 35 not in [i for i, _ in top]
    assert make_retriever(ds).method_for([35]) == "popularity"  # no text index given
    assert r.method_for([35, 1]) == "sasrec"


def test_bad_item_index_is_a_clear_error(cycle_dataset):
    r = make_retriever(cycle_dataset)
    with pytest.raises(ValueError, match="not in the catalog"):
        r.top_k([cycle_dataset.n_items + 3])


def test_for_dataset_trains_saves_then_loads(cycle_dataset, tmp_path, monkeypatch):
    cfg = RetrievalConfig(maxlen=12, hidden=16, dropout=0.0, epochs=2, lr=1e-2, batch_size=16,
                          warmup_steps=2, checkpoint_dir=str(tmp_path))
    with pytest.raises(ModelNotFound, match="recdemo train"):
        Retriever.for_dataset(cycle_dataset, cfg, train_if_missing=False)
    trained = Retriever.for_dataset(cycle_dataset, cfg, progress=False)
    assert (tmp_path / "sasrec-cycles.safetensors").is_file()
    from recdemo.retrieval import train
    monkeypatch.setattr(train, "train_sasrec", lambda *a, **k: pytest.fail("must load, not retrain"))
    loaded = Retriever.for_dataset(cycle_dataset, cfg, progress=False)
    assert loaded.top_k([0, 1], 5) == trained.top_k([0, 1], 5)
    assert loaded.meta["dataset_hash"] == cycle_dataset.content_hash


def test_for_dataset_retrains_a_stale_checkpoint(cycle_dataset, tmp_path):
    from dataclasses import replace
    cfg = RetrievalConfig(maxlen=12, hidden=16, epochs=1, batch_size=16, warmup_steps=2,
                          checkpoint_dir=str(tmp_path))
    old = SASRec(SASRecConfig(n_items=cycle_dataset.n_items, maxlen=12, hidden=16))
    save_checkpoint(old, cfg, cycle_dataset, tmp_path)
    changed = replace(cycle_dataset, sequences=[s[::-1] for s in cycle_dataset.sequences])
    with pytest.raises(ModelNotFound, match="trained on other data"):
        Retriever.for_dataset(changed, cfg, train_if_missing=False)
    r = Retriever.for_dataset(changed, cfg, progress=False)
    assert r.meta["dataset_hash"] == changed.content_hash
