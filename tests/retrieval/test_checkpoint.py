import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import real_data_root

from recdemo.config import PROJECT_ROOT, RetrievalConfig
from recdemo.retrieval.checkpoint import (checkpoint_paths, checkpoint_problem, load_checkpoint, locate,
                                         save_checkpoint)
from recdemo.retrieval.sasrec import SASRec, SASRecConfig


def random_model(dataset, seed=0):
    torch.manual_seed(seed)
    return SASRec(SASRecConfig(n_items=dataset.n_items, maxlen=8, hidden=16, dropout=0.0)).eval()


def test_round_trip_gives_the_same_scores(cycle_dataset, tmp_path):
    model = random_model(cycle_dataset)
    path = save_checkpoint(model, RetrievalConfig(), cycle_dataset, tmp_path, report={"best_epoch": 3})
    assert path == tmp_path / "sasrec-cycles.json"
    meta = json.loads(path.read_text())
    assert meta["dataset_hash"] == cycle_dataset.content_hash and meta["report"]["best_epoch"] == 3
    assert not {"checkpoint_dir", "cache_dir", "text_cache_dir"} & set(meta["train"])
    weights, _ = checkpoint_paths("cycles", tmp_path)
    assert weights.name == meta["weights"] and weights.name.startswith("sasrec-cycles.")
    loaded = load_checkpoint(cycle_dataset, tmp_path)
    assert loaded is not None and not loaded.training
    hist = [[1, 2, 3], [5]]
    assert torch.allclose(loaded.score(hist), model.score(hist), rtol=1e-2, atol=1e-3)  # float16 on disk
    assert loaded.item_emb.weight.dtype == torch.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, weights.name])  # no temp files


def test_a_crash_before_the_meta_is_written_leaves_the_old_pair(cycle_dataset, tmp_path, monkeypatch):
    from recdemo.retrieval import checkpoint as ckpt

    old, new = random_model(cycle_dataset, seed=0), random_model(cycle_dataset, seed=1)
    save_checkpoint(old, RetrievalConfig(), cycle_dataset, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*a, **k):
        raise KeyboardInterrupt  # killed after the new weights are on disk, before the meta
    monkeypatch.setattr(ckpt, "write_json_atomically", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(new, RetrievalConfig(), cycle_dataset, tmp_path)
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items())
    hist = [[1, 2, 3]]
    assert torch.allclose(load_checkpoint(cycle_dataset, tmp_path).score(hist), old.score(hist), rtol=1e-2, atol=1e-3)

    monkeypatch.undo()  # the next save replaces the pair and removes the weights the old meta named
    save_checkpoint(new, RetrievalConfig(), cycle_dataset, tmp_path)
    assert torch.allclose(load_checkpoint(cycle_dataset, tmp_path).score(hist), new.score(hist), rtol=1e-2, atol=1e-3)
    old_weights = json.loads(before["sasrec-cycles.json"])["weights"]
    assert not (tmp_path / old_weights).exists()


def test_the_shipped_layout_still_loads_and_is_replaced_cleanly(cycle_dataset, tmp_path):
    # Shipped checkpoints: sasrec-<name>.safetensors beside a JSON that names no weights file.
    model = random_model(cycle_dataset)
    meta_file = save_checkpoint(model, RetrievalConfig(), cycle_dataset, tmp_path)
    meta = json.loads(meta_file.read_text())
    (tmp_path / meta.pop("weights")).rename(tmp_path / "sasrec-cycles.safetensors")
    del meta["weights_sha256"]
    meta_file.write_text(json.dumps(meta))
    hist = [[4, 5]]
    assert torch.allclose(load_checkpoint(cycle_dataset, tmp_path).score(hist), model.score(hist), rtol=1e-2, atol=1e-3)
    save_checkpoint(random_model(cycle_dataset, seed=3), RetrievalConfig(), cycle_dataset, tmp_path)
    assert not (tmp_path / "sasrec-cycles.safetensors").exists()
    assert load_checkpoint(cycle_dataset, tmp_path) is not None


def test_locate_uses_the_shipped_checkpoint_only_for_the_data_it_was_trained_on(cycle_dataset, tmp_path):
    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    cfg = RetrievalConfig(checkpoint_dir=str(shipped), cache_dir=str(cache))
    save_checkpoint(random_model(cycle_dataset), cfg, cycle_dataset, shipped)
    assert locate(cycle_dataset, cfg) == (shipped, "cycles")
    other = replace(cycle_dataset, sequences=[s[::-1] for s in cycle_dataset.sequences])
    assert locate(other, cfg) == (cache, f"cycles-{other.content_hash}")


def test_missing_checkpoint_gives_none(cycle_dataset, tmp_path):
    assert load_checkpoint(cycle_dataset, tmp_path) is None
    assert "no SASRec checkpoint" in checkpoint_problem(cycle_dataset, tmp_path)


def test_stale_checkpoint_is_rejected(cycle_dataset, tmp_path):
    save_checkpoint(random_model(cycle_dataset), RetrievalConfig(), cycle_dataset, tmp_path)
    changed = replace(cycle_dataset, sequences=[s[::-1] for s in cycle_dataset.sequences])
    assert changed.name == cycle_dataset.name and changed.content_hash != cycle_dataset.content_hash
    assert load_checkpoint(changed, tmp_path) is None
    assert "trained on other data" in checkpoint_problem(changed, tmp_path)


def test_corrupt_weights_give_none(cycle_dataset, tmp_path):
    save_checkpoint(random_model(cycle_dataset), RetrievalConfig(), cycle_dataset, tmp_path)
    weights, _ = checkpoint_paths("cycles", tmp_path)
    weights.write_bytes(b"not a safetensors file")
    assert load_checkpoint(cycle_dataset, tmp_path) is None


def test_damaged_weights_that_still_parse_give_none(cycle_dataset, tmp_path):
    save_checkpoint(random_model(cycle_dataset), RetrievalConfig(), cycle_dataset, tmp_path)
    weights, _ = checkpoint_paths("cycles", tmp_path)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight: a valid file with a wrong number
    weights.write_bytes(bytes(data))
    assert load_checkpoint(cycle_dataset, tmp_path) is None


def test_dataset_names_become_safe_file_names(tmp_path):
    weights, meta = checkpoint_paths("../my data/set", tmp_path)
    assert weights.parent == tmp_path and meta.parent == tmp_path
    assert weights.name == "sasrec-my_data_set.safetensors"


@pytest.mark.integration
@pytest.mark.parametrize("name", ["movielens-small", "amazon-beauty"])
def test_shipped_checkpoint_matches_the_dataset(name):
    from recdemo.data import load_dataset

    dataset = load_dataset(name, root=real_data_root(name))
    directory = PROJECT_ROOT / "checkpoints"
    assert checkpoint_problem(dataset, directory) is None
    model = load_checkpoint(dataset, directory)
    assert model is not None and model.cfg.n_items == dataset.n_items
    assert model.meta["dataset_hash"] == dataset.content_hash
    scores = model.score([dataset.sequences[0][:-1]]).numpy()
    assert scores.shape == (1, dataset.n_items) and np.isfinite(scores).all()


@pytest.mark.parametrize("name", ["movielens-small", "amazon-beauty"])
def test_shipped_checkpoint_was_trained_with_the_dataset_preset(name):
    # `python -m recdemo train --dataset NAME` without flags must reproduce the shipped checkpoint.
    meta = json.loads((PROJECT_ROOT / "checkpoints" / f"sasrec-{name}.json").read_text())
    preset = RetrievalConfig().for_dataset(name)
    keys = ["maxlen", "hidden", "layers", "heads", "dropout", "loss", "negatives", "epochs", "lr",
            "batch_size", "weight_decay", "warmup_steps", "eval_every", "patience", "seed", "exclude_seen",
            "text_features"]
    assert {k: meta["train"][k] for k in keys} == {k: getattr(preset, k) for k in keys}
