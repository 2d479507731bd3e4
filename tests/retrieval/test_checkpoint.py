import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import real_data_root

from recdemo.config import PROJECT_ROOT, RetrievalConfig
from recdemo.retrieval.checkpoint import checkpoint_paths, checkpoint_problem, load_checkpoint, save_checkpoint
from recdemo.retrieval.sasrec import SASRec, SASRecConfig


def random_model(dataset, seed=0):
    torch.manual_seed(seed)
    return SASRec(SASRecConfig(n_items=dataset.n_items, maxlen=8, hidden=16, dropout=0.0)).eval()


def test_round_trip_gives_the_same_scores(cycle_dataset, tmp_path):
    model = random_model(cycle_dataset)
    path = save_checkpoint(model, RetrievalConfig(), cycle_dataset, tmp_path, report={"best_epoch": 3})
    assert path == tmp_path / "sasrec-cycles.safetensors"
    meta = json.loads((tmp_path / "sasrec-cycles.json").read_text())
    assert meta["dataset_hash"] == cycle_dataset.content_hash and meta["report"]["best_epoch"] == 3
    assert "checkpoint_dir" not in meta["train"]
    loaded = load_checkpoint(cycle_dataset, tmp_path)
    assert loaded is not None and not loaded.training
    hist = [[1, 2, 3], [5]]
    assert torch.allclose(loaded.score(hist), model.score(hist), rtol=1e-2, atol=1e-3)  # float16 on disk
    assert loaded.item_emb.weight.dtype == torch.float32
    assert not list(tmp_path.glob("*.tmp"))


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
    weights = save_checkpoint(random_model(cycle_dataset), RetrievalConfig(), cycle_dataset, tmp_path)
    weights.write_bytes(b"not a safetensors file")
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
