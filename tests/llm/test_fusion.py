import numpy as np
import pytest

from recdemo.llm.fusion import (
    FusionStore, fuse, fused_order, gain_p_value, lookup_weight, normalize, select_weight, weight_key,
)


def test_rank_normalization_handles_ties():
    n = normalize([3.0, 1.0, 3.0, 0.0], "rank")
    assert n.max() <= 1.0 and n.min() >= 0.0
    assert n[0] == n[2] > n[1] > n[3]
    assert normalize([5.0], "rank").tolist() == [1.0]


def test_zscore_normalization_survives_minus_infinity():
    n = normalize([2.0, 0.0, -np.inf], "zscore")
    assert np.isfinite(n).all() and n[0] > n[1] > n[2]
    with pytest.raises(ValueError):
        normalize([1.0], "median")


def test_weight_zero_reproduces_sasrec_order_and_one_the_llm_order():
    rng = np.random.default_rng(0)
    sasrec = np.sort(rng.random(20))[::-1].copy()
    sasrec[5] = sasrec[6]  # a tie: list order must be kept
    llm = rng.random(20)
    assert fused_order(sasrec, llm, 0.0).tolist() == list(range(20))
    assert fused_order(sasrec, llm, 1.0).tolist() == np.argsort(-llm, kind="stable").tolist()
    for method in ("rank", "zscore"):
        assert fused_order(sasrec, llm, 0.0, method).tolist() == list(range(20))
    with pytest.raises(ValueError):
        fuse(sasrec, llm, 1.5)


def test_ties_in_the_llm_score_fall_back_to_sasrec():
    sasrec = [4.0, 3.0, 2.0, 1.0]
    llm = [0.0, 0.0, 2.0, 0.0]  # like PALR: one emitted item, the rest unranked
    assert fused_order(sasrec, llm, 1.0).tolist() == [2, 0, 1, 3]


def _lists(llm_sign: float, n_users: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        sasrec = np.sort(rng.random(50))[::-1]
        target = int(rng.integers(0, 50))
        llm = rng.random(50) * 0.1
        llm[target] = llm_sign  # +1: the LLM puts the target first; -1: last
        out.append((sasrec, llm, target))
    return out


def test_selection_picks_zero_for_an_adversarial_llm():
    w, table = select_weight(_lists(-1.0))
    assert w == 0.0
    assert table[0.0] >= max(table.values())


def test_selection_uses_a_helpful_llm_and_never_loses_to_sasrec():
    w, table = select_weight(_lists(+1.0))
    assert w > 0.0 and table[w] > table[0.0]
    with pytest.raises(ValueError):
        select_weight(_lists(1.0), grid=(0.5, 1.0))


def test_store_roundtrip_and_stale_hash(tmp_path):
    store = FusionStore(tmp_path)
    key = weight_key("/x/smollm2-135m", None, "score")
    assert key == "smollm2-135m/base/score"
    store.save("toy", "hash1", key, 0.3, users=10)
    assert store.get("toy", "hash1", key)["weight"] == 0.3
    assert store.get("toy", "other", key) is None  # tuned on other data
    store.save("toy", "hash1", weight_key("m", "a", "palr"), 0.7)
    assert store.get("toy", "hash1", key)["weight"] == 0.3  # other entries kept


def test_weights_tuned_here_go_to_the_cache_and_never_rewrite_the_shipped_file(tmp_path):
    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    key = weight_key("m", None, "score")
    FusionStore(shipped).save("movielens-small", "h1", key, 0.2)
    FusionStore(shipped).save("movielens-small", "h1", weight_key("m", None, "palr"), 0.4)
    before = (shipped / "movielens-small.json").read_bytes()
    store = FusionStore(shipped, cache)
    assert store.get("movielens-small", "h1", key)["weight"] == 0.2  # the shipped weight is read
    # A folder with the same name but other data, and a retuning of the shipped data:
    assert store.save("movielens-small", "h2", key, 0.9) == cache / "movielens-small-h2.json"
    assert store.save("movielens-small", "h1", key, 0.5) == cache / "movielens-small-h1.json"
    assert (shipped / "movielens-small.json").read_bytes() == before
    assert store.get("movielens-small", "h2", key)["weight"] == 0.9
    assert store.get("movielens-small", "h1", key)["weight"] == 0.5  # the local tuning first
    assert store.get("movielens-small", "h1", weight_key("m", None, "palr"))["weight"] == 0.4  # then shipped
    assert store.get("movielens-small", "h3", key) is None


class _DS:
    name, content_hash = "toy", "h"


def test_lookup_order_json_then_meta_then_default(tmp_path):
    store = FusionStore(tmp_path)
    assert lookup_weight(store, _DS, "m", "ad", "score", None, 0.2)[::2] == (0.2, "default")
    w, _, source = lookup_weight(store, _DS, "m", "ad", "score", {"fusion": {"score": 0.6}}, 0.2)
    assert (w, source.startswith("adapter")) == (0.6, True)
    store.save("toy", "h", weight_key("m", "ad", "score"), 0.4)
    assert lookup_weight(store, _DS, "m", "ad", "score", {"fusion": {"score": 0.6}}, 0.2)[0] == 0.4
    (tmp_path / "toy.json").write_text("{broken")
    assert lookup_weight(store, _DS, "m", "ad", "score", None, 0.2)[0] == 0.2  # never fatal


def test_a_gain_that_is_only_noise_keeps_the_weight_at_zero():
    # a tiny, random LLM signal: some weight wins on these users by luck, but not significantly
    rng = np.random.default_rng(5)
    lists = [(np.sort(rng.random(50))[::-1], rng.random(50), int(rng.integers(0, 50))) for _ in range(40)]
    w_free, table = select_weight(lists, alpha=None)
    assert w_free > 0 and table[w_free] > table[0.0]  # the unguarded choice chases noise
    assert select_weight(lists)[0] == 0.0
    assert gain_p_value(_lists(+1.0), 1.0) < 0.05  # a real gain passes
