import hashlib
import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch

from conftest import make_cycle_dataset

from recdemo.config import PROJECT_ROOT, Config, RetrievalConfig
from recdemo.data import load_dataset
from recdemo.errors import ModelNotFound
from recdemo.retrieval import retriever as retriever_mod
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


def tiny_cfg(tmp_path, **kw):
    return RetrievalConfig(**{"maxlen": 12, "hidden": 16, "dropout": 0.0, "epochs": 2, "lr": 1e-2, "batch_size": 16,
                              "warmup_steps": 2, "text_features": False, "checkpoint_dir": str(tmp_path / "shipped"),
                              "cache_dir": str(tmp_path / "cache"), **kw})


def test_for_dataset_trains_saves_then_loads(cycle_dataset, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(ModelNotFound, match="recdemo train"):
        Retriever.for_dataset(cycle_dataset, cfg, train_if_missing=False)
    trained = Retriever.for_dataset(cycle_dataset, cfg, progress=False)
    assert (tmp_path / "cache" / f"sasrec-cycles-{cycle_dataset.content_hash}.json").is_file()
    assert not (tmp_path / "shipped").exists()  # training on demand never writes the shipped folder
    monkeypatch.setattr(retriever_mod, "train_sasrec", lambda *a, **k: pytest.fail("must load, not retrain"))
    loaded = Retriever.for_dataset(cycle_dataset, cfg, progress=False)
    assert loaded.top_k([0, 1], 5) == trained.top_k([0, 1], 5)
    assert loaded.meta["dataset_hash"] == cycle_dataset.content_hash


def test_for_dataset_retrains_a_stale_checkpoint_into_the_cache(cycle_dataset, tmp_path):
    from dataclasses import replace
    cfg = tiny_cfg(tmp_path, epochs=1)
    old = SASRec(SASRecConfig(n_items=cycle_dataset.n_items, maxlen=12, hidden=16))
    shipped = save_checkpoint(old, cfg, cycle_dataset, cfg.checkpoint_dir)
    before = shipped.read_bytes()
    changed = replace(cycle_dataset, sequences=[s[::-1] for s in cycle_dataset.sequences])
    with pytest.raises(ModelNotFound, match="trained on other data"):
        Retriever.for_dataset(changed, cfg, train_if_missing=False)
    r = Retriever.for_dataset(changed, cfg, progress=False)
    assert r.meta["dataset_hash"] == changed.content_hash
    assert shipped.read_bytes() == before
    assert Retriever.for_dataset(cycle_dataset, cfg, train_if_missing=False).meta["dataset_hash"] == \
        cycle_dataset.content_hash  # the shipped one still serves its own data


def test_unreadable_shipped_weights_are_left_alone_and_the_cache_serves(cycle_dataset, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, epochs=1)
    old = SASRec(SASRecConfig(n_items=cycle_dataset.n_items, maxlen=12, hidden=16))
    shipped = save_checkpoint(old, cfg, cycle_dataset, cfg.checkpoint_dir)
    weights = shipped.with_name(json.loads(shipped.read_text())["weights"])
    weights.write_bytes(b"damaged")
    Retriever.for_dataset(cycle_dataset, cfg, progress=False)  # trains once, into the cache
    assert weights.read_bytes() == b"damaged"
    monkeypatch.setattr(retriever_mod, "train_sasrec", lambda *a, **k: pytest.fail("must load, not retrain"))
    assert Retriever.for_dataset(cycle_dataset, cfg, progress=False).meta["dataset_hash"] == cycle_dataset.content_hash


def write_folder(folder, dataset):
    """``dataset`` as an uploaded folder (interactions.csv + items.csv)."""
    folder.mkdir(parents=True)
    cat = dataset.catalog
    rows = [f"{cat.ids[i]},{json.dumps(cat.titles[i])}" for i in range(len(cat))]
    (folder / "items.csv").write_text("item_id,title\n" + "\n".join(rows) + "\n")
    rows = [f"{u},{cat.ids[i]},{t}" for u, seq in zip(dataset.users, dataset.sequences) for t, i in enumerate(seq)]
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return folder


def read_only_copy_of_shipped(tmp_path, name="movielens-small"):
    shipped = sorted((PROJECT_ROOT / "checkpoints").glob(f"sasrec-{name}.*"))
    assert len(shipped) == 2, "the shipped checkpoint is missing"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for f in shipped:
        shutil.copy(f, folder / f.name)
        (folder / f.name).chmod(0o444)
    folder.chmod(0o555)
    return folder, {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()}


def test_a_folder_named_like_a_builtin_never_replaces_its_shipped_checkpoint(tmp_path, monkeypatch):
    shipped, digests = read_only_copy_of_shipped(tmp_path)
    try:
        cfg = tiny_cfg(tmp_path, checkpoint_dir=str(shipped))
        a = load_dataset(None, data_dir=str(write_folder(tmp_path / "a" / "movielens-small", make_cycle_dataset())))
        b = load_dataset(None, data_dir=str(write_folder(tmp_path / "b" / "movielens-small",
                                                         make_cycle_dataset(seed=1))))
        assert a.name == b.name == "movielens-small" and a.content_hash != b.content_hash
        ra = Retriever.for_dataset(a, cfg, progress=False)
        rb = Retriever.for_dataset(b, cfg, progress=False)
        assert ra.meta["dataset_hash"] == a.content_hash and rb.meta["dataset_hash"] == b.content_hash
        cached = sorted(p.name for p in (tmp_path / "cache").glob("*.json"))
        assert cached == sorted(f"sasrec-movielens-small-{d.content_hash}.json" for d in (a, b))
        monkeypatch.setattr(retriever_mod, "train_sasrec", lambda *a, **k: pytest.fail("must load, not retrain"))
        assert Retriever.for_dataset(a, cfg, progress=False).top_k([0, 1], 5) == ra.top_k([0, 1], 5)
        assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in shipped.iterdir()} == digests
    finally:
        shipped.chmod(0o755)


def test_evaluate_on_a_folder_named_like_a_builtin_leaves_the_shipped_checkpoint(tmp_path, capsys):
    from recdemo.cli.evaluate import cli_evaluate
    from recdemo.cli.main import build_parser

    shipped, digests = read_only_copy_of_shipped(tmp_path)
    try:
        folder = write_folder(tmp_path / "x" / "movielens-small", make_cycle_dataset())
        args = build_parser().parse_args(["evaluate", "--data-dir", str(folder), "--stage", "retrieval"])
        cfg = Config().apply_args(args)
        for name, value in asdict(tiny_cfg(tmp_path, checkpoint_dir=str(shipped))).items():
            cfg = cfg.set("retrieval", name, value)
        assert cli_evaluate(args, cfg) == 0
        assert "movielens-small" in capsys.readouterr().out
        assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in shipped.iterdir()} == digests
        assert len(list((tmp_path / "cache").glob("sasrec-movielens-small-*.json"))) == 1
    finally:
        shipped.chmod(0o755)


def test_train_on_a_folder_named_like_a_builtin_saves_into_the_cache(tmp_path, capsys):
    from recdemo.cli.main import build_parser
    from recdemo.cli.train import cli_train

    folder = write_folder(tmp_path / "x" / "movielens-small", make_cycle_dataset())
    args = build_parser().parse_args(["train", "--data-dir", str(folder), "--epochs", "1", "--hidden", "16",
                                      "--maxlen", "12", "--no-text-features"])
    cfg = Config().apply_args(args).set("retrieval", "checkpoint_dir", str(tmp_path / "shipped"))
    cfg = cfg.set("retrieval", "cache_dir", str(tmp_path / "cache"))
    assert cli_train(args, cfg) == 0
    dataset = load_dataset(None, data_dir=str(folder))
    saved = tmp_path / "cache" / f"sasrec-movielens-small-{dataset.content_hash}.json"
    assert saved.is_file() and str(saved) in capsys.readouterr().out
    assert not (tmp_path / "shipped").exists()
    assert Retriever.for_dataset(dataset, cfg.retrieval, train_if_missing=False).meta["dataset_hash"] == \
        dataset.content_hash


def test_recommend_on_a_folder_named_like_a_builtin_leaves_the_shipped_checkpoint(tmp_path, tiny_service):
    """Issue 18: `recommend` (the CLI's and the app's one object) on any folder called movielens-small
    trains into the cache; the shipped checkpoint, read-only here, stays byte-identical."""
    from dataclasses import replace

    from recdemo.pipeline.recommender import Recommender

    shipped, digests = read_only_copy_of_shipped(tmp_path)
    try:
        folder = write_folder(tmp_path / "x" / "movielens-small", make_cycle_dataset())
        cfg = Config()
        cfg = replace(cfg, data=replace(cfg.data, data_dir=str(folder)), llm=tiny_service.cfg,
                      retrieval=tiny_cfg(tmp_path, checkpoint_dir=str(shipped), text_cache_dir=str(tmp_path / "t")))
        rec = Recommender.from_config(cfg, service=tiny_service)
        out = rec.recommend(list(rec.catalog.titles[:3]), ranker="score", n_candidates=5, k=3, adapter="none")
        assert len(out.results) == 3 and rec.name == "movielens-small"
        assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in shipped.iterdir()} == digests
        assert len(list((tmp_path / "cache").glob("sasrec-movielens-small-*.json"))) == 1
    finally:
        shipped.chmod(0o755)
