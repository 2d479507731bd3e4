import numpy as np
import pytest
import torch

from recdemo.config import RetrievalConfig
from recdemo.eval.retrieval_eval import evaluate_models
from recdemo.retrieval import train as train_mod
from recdemo.retrieval.baselines import Popularity
from recdemo.retrieval.sasrec import SASRec, SASRecConfig
from recdemo.retrieval.train import make_windows, seen_before, sequence_loss, train_sasrec


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


def test_exclude_seen_needs_the_full_softmax(cycle_dataset):
    for kw in ({"loss": "bce"}, {"negatives": 8}):
        with pytest.raises(ValueError, match="--no-exclude-seen"):
            train_sasrec(cycle_dataset, tiny_cfg(exclude_seen=True, epochs=1, **kw), progress=False)


def test_unknown_loss_is_rejected(cycle_dataset):
    with pytest.raises(ValueError, match="unknown loss"):
        train_sasrec(cycle_dataset, tiny_cfg(loss="hinge", epochs=1), progress=False)


def test_train_flags_reach_the_retrieval_config():
    from recdemo.cli.main import build_parser
    from recdemo.config import Config

    args = build_parser().parse_args(["train", "--dataset", "movielens-small", "--lr", "1e-3", "--hidden", "128",
                                      "--dropout", "0.5", "--batch-size", "64", "--maxlen", "50", "--seed", "7"])
    cfg = Config().apply_args(args).retrieval.for_dataset("movielens-small")
    assert (cfg.lr, cfg.hidden, cfg.dropout, cfg.batch_size, cfg.maxlen, cfg.seed) == (1e-3, 128, 0.5, 64, 50, 7)
    assert cfg.epochs == 30  # not given: the dataset's preset
    assert cfg.text_features is True and cfg.exclude_seen is True
    off = build_parser().parse_args(["train", "--dataset", "movielens-small", "--no-text-features", "--no-exclude-seen"])
    off_cfg = Config().apply_args(off).retrieval.for_dataset("movielens-small")
    assert (off_cfg.text_features, off_cfg.exclude_seen, off_cfg.seed) == (False, False, 2)
    assert Config().retrieval.for_dataset("some-upload").seed == 42  # no preset: the default seed
    # Flags of other commands do not leak into SASRec's settings.
    ft = build_parser().parse_args(["finetune", "--dataset", "movielens-small", "--batch-size", "4", "--out", "x"])
    assert Config().apply_args(ft).retrieval.for_dataset("movielens-small").batch_size == 16


def test_seen_before_lists_each_positions_earlier_items_but_not_its_target():
    inputs = torch.tensor([[0, 0, 3, 5, 3, 7], [1, 2, 4, 6, 8, 2]])
    targets = torch.tensor([[0, 3, 5, 3, 7, 9], [2, 4, 6, 8, 2, 0]])
    keep = (inputs > 0) & (targets > 0)
    y = targets[keep] - 1
    rows, items = seen_before(inputs, keep, y)
    expected, row = set(), 0
    for b in range(2):  # brute force: for each kept position, the window's items up to it
        for t in range(6):
            if keep[b, t]:
                expected |= {(row, int(i) - 1) for i in inputs[b, :t + 1] if i > 0 and int(i) - 1 != y[row]}
                row += 1
    assert set(zip(rows.tolist(), items.tolist())) == expected
    assert (1, 4) in expected and (1, 2) not in expected  # row 1 repeats item 2: it stays allowed


def test_exclude_seen_is_cross_entropy_over_the_unseen_items():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=20, maxlen=6, hidden=8, dropout=0.0)).eval()
    batch = torch.tensor([[0, 0, 3, 5, 3, 7, 9], [1, 2, 4, 6, 8, 2, 11]])
    gen = torch.Generator().manual_seed(0)
    masked = sequence_loss(model, batch, "ce", gen, exclude_seen=True)
    hidden = model(batch[:, :-1])
    losses = []  # by hand, one position at a time
    for b, row in enumerate(batch):
        for t in range(6):
            if row[t] > 0:
                logits = model.logits(hidden[b, t])
                target = int(row[t + 1]) - 1
                seen = [int(i) - 1 for i in row[:t + 1] if i > 0 and int(i) - 1 != target]
                logits[seen] = float("-inf")
                losses.append(torch.nn.functional.cross_entropy(logits[None], torch.tensor([target])))
    assert torch.allclose(masked, torch.stack(losses).mean(), atol=1e-5)
    assert masked < sequence_loss(model, batch, "ce", gen)  # fewer competitors, lower loss


def test_text_features_train_and_save_as_a_plain_sasrec(cycle_dataset):
    torch.set_num_threads(1)
    features = np.random.default_rng(0).normal(size=(cycle_dataset.n_items, 6)).astype(np.float32)
    model, report = train_sasrec(cycle_dataset, tiny_cfg(text_features=True, exclude_seen=True), progress=False,
                                 item_features=features)
    assert model.feature_proj is None  # folded into the item table
    assert set(model.state_dict()) == set(SASRec(model.cfg).state_dict())
    assert report["valid"]["ndcg@10"] > 0.9


def test_training_reports_each_epoch_and_can_be_cancelled(cycle_dataset):
    import threading

    seen = []
    train_sasrec(cycle_dataset, tiny_cfg(epochs=3, patience=9), progress=False,
                 on_epoch=lambda epoch, total, record: seen.append((epoch, total, round(record["loss"], 6))))
    assert [(e, t) for e, t, _ in seen] == [(1, 3), (2, 3), (3, 3)] and seen[2][2] < seen[0][2]

    cancel = threading.Event()

    def stop_after_first(epoch, total, record):
        cancel.set()

    with pytest.raises(train_mod.TrainingCancelled):
        train_sasrec(cycle_dataset, tiny_cfg(epochs=3, patience=9), progress=False, cancel=cancel,
                     on_epoch=stop_after_first)
