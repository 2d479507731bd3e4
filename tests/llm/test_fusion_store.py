"""fusion_store: tuned weights by (dataset, model, adapter, ranker); shipped files never rewritten."""
from recdemo.llm.fusion_store import FusionStore, lookup_weight, weight_key


class _DS:
    name, content_hash = "toy", "h"


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


def test_lookup_order_json_then_meta_then_default(tmp_path):
    store = FusionStore(tmp_path)
    assert lookup_weight(store, _DS, "m", "ad", "score", None, 0.2)[::2] == (0.2, "default")
    w, _, source = lookup_weight(store, _DS, "m", "ad", "score", {"fusion": {"score": 0.6}}, 0.2)
    assert (w, source.startswith("adapter")) == (0.6, True)
    store.save("toy", "h", weight_key("m", "ad", "score"), 0.4)
    assert lookup_weight(store, _DS, "m", "ad", "score", {"fusion": {"score": 0.6}}, 0.2)[0] == 0.4
    (tmp_path / "toy.json").write_text("{broken")
    assert lookup_weight(store, _DS, "m", "ad", "score", None, 0.2)[0] == 0.2  # never fatal
