"""The tree decoder's KV backends: static (preallocated, padded calls) gives eager's log-probs,
greedy titles and beams on CPU; graphs is chosen on CUDA only (elsewhere it runs as static)."""
import numpy as np
import pytest
import torch

from recdemo.llm.rankers import tree_kv
from recdemo.llm.rankers.decoding import ROOT, TreeDecoder, trie_logprobs
from recdemo.llm.rankers.genrec import beam_titles
from recdemo.llm.rankers.palr import greedy_titles
from recdemo.llm.token_trie import TokenTrie


def answers(tokenizer, n=30, end="\n"):
    texts = [f" {w} {'Bravo' if i % 3 else 'Castle'} Story ({1980 + i}){end}"
             for i, w in zip(range(n), ["Alpha", "Delta", "Echo", "Ghost"] * n)]
    return [(ids, i) for i, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"])]


def prompt(tokenizer):
    return tokenizer("Keywords: Summary: the movies watched, then the next one")["input_ids"]


def test_buckets_repeat_few_shapes():
    assert [tree_kv.width_bucket(n) for n in (1, 2, 3, 5, 8, 9, 64, 65, 130)] == [1, 2, 4, 8, 8, 16, 64, 128, 192]
    assert all(tree_kv.width_bucket(n) >= n for n in range(1, 600))
    assert tree_kv.capacity_bucket(1) == tree_kv.capacity_bucket(tree_kv.CAPACITY_BUCKET) == tree_kv.CAPACITY_BUCKET


@pytest.mark.parametrize("requested, device, runs", [
    ("auto", "cpu", "eager"), ("eager", "cpu", "eager"), ("static", "cpu", "static"), ("graphs", "cpu", "static"),
    ("auto", "cuda", "graphs"), ("graphs", "cuda", "graphs"), ("static", "cuda", "static"), ("eager", "cuda", "eager"),
])
def test_backend_selection_follows_the_generation_decoder(tiny_llm, requested, device, runs):
    kv = tree_kv.make_kv(tiny_llm.model.model, torch.device(device), requested)  # nothing runs on the device yet
    assert kv.backend == runs
    if runs != "eager":
        assert (kv._step is tree_kv._compiled_step()) == (runs == "graphs")
    with pytest.raises(ValueError):
        tree_kv.make_kv(tiny_llm.model.model, torch.device(device), "fast")


@pytest.mark.parametrize("bucket", [256, 16])  # 16: the cache has to grow (a copy) several times
def test_static_trie_logprobs_equal_eager(tiny_llm, monkeypatch, bucket):
    monkeypatch.setattr(tree_kv, "CAPACITY_BUCKET", bucket)
    tok = tiny_llm.tokenizer
    trie = TokenTrie(answers(tok))
    out = {}
    with torch.inference_mode():
        for backend in ("eager", "static"):
            d = TreeDecoder(tiny_llm.model, prompt(tok), backend=backend, reserve=4)
            first = trie_logprobs(d, trie, max_nodes=7)  # several padded calls (widths 7 -> 8 and the rest)
            d.reset()  # the prompt's KV is reused; the nodes' slots are written over
            again = trie_logprobs(d, trie)
            out[backend] = (first, again, d)
    eager, static = out["eager"], out["static"]
    assert static[2].backend == "static" and static[2].kv.capacity >= static[2].kv.length
    if bucket == 16:
        assert static[2].kv.capacity > tree_kv.capacity_bucket(len(prompt(tok)) + 4)  # it grew
    items = range(30)
    for a in (static[0], static[1], eager[1]):
        assert np.allclose([a[i] for i in items], [eager[0][i] for i in items], atol=1e-5)
    assert static[2].forwards == eager[2].forwards


def test_static_greedy_titles_and_beams_equal_eager(tiny_llm):
    tok = tiny_llm.tokenizer
    results = {}
    with torch.inference_mode():
        for backend in ("eager", "static"):
            greedy = greedy_titles(TreeDecoder(tiny_llm.model, prompt(tok), backend=backend), TokenTrie(answers(tok)), 8)
            beams = beam_titles(TreeDecoder(tiny_llm.model, prompt(tok), backend=backend),
                                TokenTrie(answers(tok, end="<|im_end|>")), 5)
            results[backend] = greedy, beams
    for eager, static in zip(results["eager"], results["static"]):
        assert [i for i, _ in static] == [i for i, _ in eager] and len(eager) > 3
        assert np.allclose([lp for _, lp in static], [lp for _, lp in eager], atol=1e-5)


def test_padding_slots_are_never_seen(tiny_llm):
    """A static call of 3 nodes runs 4 (padding); the next call's nodes and a plain forward agree."""
    tok = tiny_llm.tokenizer
    p = prompt(tok)
    with torch.inference_mode():
        d = TreeDecoder(tiny_llm.model, p, backend="static")
        d.extend([5, 6, 7], [ROOT, 0, ROOT])
        assert d.kv.length == len(p) + 3
        d.extend([8], [1])
        for node in range(4):
            ref = tiny_llm.model.model(input_ids=torch.tensor([p + d.path_tokens(node)])).last_hidden_state[0, -1]
            assert torch.allclose(d.hidden_of(node), ref, atol=1e-5)


def test_static_caches_are_pooled_so_buffers_keep_their_addresses(tiny_llm, monkeypatch):
    """A captured graph replays only while its KV buffers stay where they were: the next decoder of the
    same model reuses a dropped decoder's cache (and still gives eager's numbers), growth hands the
    smaller cache back, and the pool is bounded."""
    monkeypatch.setattr(tree_kv, "_POOL", tree_kv._CachePool())
    tok = tiny_llm.tokenizer
    trie = TokenTrie(answers(tok))
    with torch.inference_mode():
        eager = trie_logprobs(TreeDecoder(tiny_llm.model, prompt(tok)), trie)
        first = TreeDecoder(tiny_llm.model, prompt(tok), backend="static")
        address = first.cache.layers[0].keys.data_ptr()
        del first  # dropped: its cache goes back to the pool
        assert tree_kv._POOL.idle(tiny_llm.model.model) == 1
        second = TreeDecoder(tiny_llm.model, prompt(tok), backend="static")
        assert second.cache.layers[0].keys.data_ptr() == address and tree_kv._POOL.idle(tiny_llm.model.model) == 0
        again = trie_logprobs(second, trie)
        assert np.allclose([again[i] for i in range(30)], [eager[i] for i in range(30)], atol=1e-5)
        second.kv._ensure_capacity(second.kv.capacity + 1)  # grows: the old cache is idle again
        assert tree_kv._POOL.idle(tiny_llm.model.model) == 1
        grown = [TreeDecoder(tiny_llm.model, prompt(tok), backend="static", reserve=300 * k) for k in range(1, 7)]
        del grown
        assert tree_kv._POOL.idle(tiny_llm.model.model) == tree_kv.POOLED_CACHES


def test_same_device_ignores_a_missing_index():
    assert tree_kv._same_device("cuda", "cuda:0") and tree_kv._same_device("cpu", torch.device("cpu"))
    assert not tree_kv._same_device("cuda:0", "cuda:1") and not tree_kv._same_device("cpu", "cuda")
