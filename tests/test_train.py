import numpy as np
import pytest
import torch

from recdemo.config import RetrievalConfig
from recdemo.eval.retrieval_eval import evaluate_models
from recdemo.retrieval import train as train_mod
from recdemo.retrieval.baselines import Popularity
from recdemo.retrieval.train import make_windows, train_sasrec


def tiny_cfg(**kw):
    base = dict(maxlen=12, hidden=16, dropout=0.0, epochs=12, lr=1e-2, batch_size=16, warmup_steps=5,
                weight_decay=0.0, patience=3)
    base.update(kw)
    return RetrievalConfig(**base)


def test_windows_hold_every_transition_once():
    seqs = [np.arange(10), np.array([3, 4]), np.array([7])]
    w = make_windows(seqs, maxlen=4)
    assert w.shape[1] == 5
    pairs = [(int(r[i]), int(r[i + 1])) for r in w for i in range(4) if r[i] > 0 and r[i + 1] > 0]
    expected = [(a + 1, a + 2) for a in range(9)] + [(4, 5)]
    assert sorted(pairs) == sorted(expected)
    assert all((r[: np.argmax(r > 0)] == 0).all() for r in w)  # left padding only


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_sasrec_learns_cycles_better_than_popularity(cycle_dataset, loss):
    torch.set_num_threads(1)
    cfg = tiny_cfg(loss=loss, epochs=12 if loss == "ce" else 30)
    model, report = train_sasrec(cycle_dataset, cfg, progress=False)
    result = evaluate_models({"sasrec": lambda h: model.score(h).numpy(),
                              "popularity": Popularity.for_dataset(cycle_dataset).score_batch},
                             cycle_dataset, split="test", protocols=("full",))["full"]
    assert result["popularity"]["ndcg@10"] < 0.5
    assert result["sasrec"]["ndcg@10"] > 0.9
    assert report["valid"]["ndcg@10"] > 0.9
    assert 1 <= report["best_epoch"] <= report["epochs_run"] <= cfg.epochs
    assert not model.training


def test_training_reads_only_training_sequences(cycle_dataset, monkeypatch):
    seen = []
    real = train_mod.make_windows
    monkeypatch.setattr(train_mod, "make_windows", lambda seqs, maxlen: seen.append(seqs) or real(seqs, maxlen))
    train_sasrec(cycle_dataset, tiny_cfg(epochs=1), progress=False)
    expected = cycle_dataset.train_sequences()
    assert len(seen) == 1 and all(np.array_equal(a, b) for a, b in zip(seen[0], expected))
    # and no validation/test target appears at the end of a training sequence's user
    assert all(len(a) == len(s) - 2 for a, s in zip(seen[0], cycle_dataset.sequences))


def test_training_is_seeded(cycle_dataset):
    a, _ = train_sasrec(cycle_dataset, tiny_cfg(epochs=2, dropout=0.1), progress=False)
    b, _ = train_sasrec(cycle_dataset, tiny_cfg(epochs=2, dropout=0.1), progress=False)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_unknown_loss_is_rejected(cycle_dataset):
    with pytest.raises(ValueError, match="unknown loss"):
        train_sasrec(cycle_dataset, tiny_cfg(loss="hinge", epochs=1), progress=False)


def test_train_flags_reach_the_retrieval_config():
    from recdemo.cli import build_parser
    from recdemo.config import Config

    args = build_parser().parse_args(["train", "--dataset", "movielens-small", "--lr", "1e-3", "--hidden", "128",
                                      "--dropout", "0.5", "--batch-size", "64", "--maxlen", "50", "--seed", "7"])
    cfg = Config().apply_args(args).retrieval.for_dataset("movielens-small")
    assert (cfg.lr, cfg.hidden, cfg.dropout, cfg.batch_size, cfg.maxlen, cfg.seed) == (1e-3, 128, 0.5, 64, 50, 7)
    assert cfg.epochs == 30  # not given: the dataset's preset
    # Flags of other commands do not leak into SASRec's settings.
    ft = build_parser().parse_args(["finetune", "--dataset", "movielens-small", "--batch-size", "4", "--out", "x"])
    assert Config().apply_args(ft).retrieval.for_dataset("movielens-small").batch_size == 16
