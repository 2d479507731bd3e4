"""TreeDecoder's reads: every branching point of a trie in one gathered matmul and one host
transfer, equal to one constrained softmax per node (the way trie_logprobs read before)."""
import numpy as np
import pytest
import torch

from recdemo.llm.rankers.decoding import ROOT, TreeDecoder, trie_feed, trie_logprobs
from recdemo.llm.token_trie import TokenTrie


def lines(tokenizer, n=25):
    texts = [f" Alpha {'Bravo' if i % 3 else 'Castle'} Story ({1980 + i})\n" for i in range(n)]
    return [(ids, i) for i, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"])]


def prompt(tokenizer):
    return tokenizer("Keywords: Summary: movies watched")["input_ids"]


class OneByOne:
    """The decoder without ``log_softmax_many``: trie_logprobs reads node by node (as batch_score's
    recorder does), the reference for the gathered read."""

    def __init__(self, decoder):
        self.decoder, self.reads = decoder, 0

    @property
    def tokens(self):
        return self.decoder.tokens

    def extend(self, tokens, parents):
        return self.decoder.extend(tokens, parents)

    def log_softmax_over(self, node, token_ids):
        self.reads += 1
        return self.decoder.log_softmax_over(node, token_ids)


def test_gathered_reads_equal_one_softmax_per_node(tiny_llm):
    tok = tiny_llm.tokenizer
    trie = TokenTrie(lines(tok))
    with torch.inference_mode():
        gathered = trie_logprobs(TreeDecoder(tiny_llm.model, prompt(tok)), trie)
        one_by_one = OneByOne(TreeDecoder(tiny_llm.model, prompt(tok)))
        reference = trie_logprobs(one_by_one, trie)
    assert one_by_one.reads > 3  # the trie really branches in several places
    assert sorted(gathered) == sorted(reference) == list(range(25))
    assert np.allclose([gathered[i] for i in range(25)], [reference[i] for i in range(25)], atol=1e-6)
    # a proper distribution over the trie's items (every choice renormalised over the allowed tokens)
    assert np.isclose(sum(np.exp(v) for v in gathered.values()), 1.0, atol=1e-5)


def test_log_softmax_many_rows_equal_log_softmax_over(tiny_llm):
    tok = tiny_llm.tokenizer
    with torch.inference_mode():
        d = TreeDecoder(tiny_llm.model, prompt(tok))
        a, b = d.extend([5, 7, 9], [ROOT, 0, 0])[1:]
        reads = [(ROOT, [3, 4, 5, 6]), (a, [10, 11]), (b, [12, 13, 14])]
        rows = d.log_softmax_many(reads)
        assert rows.shape == (3, 4)
        for r, (node, toks) in enumerate(reads):
            assert torch.allclose(rows[r, :len(toks)], d.log_softmax_over(node, toks), atol=1e-6)
            assert torch.isinf(rows[r, len(toks):]).all()


def test_trie_logprobs_reads_once_and_transfers_once(tiny_llm, monkeypatch):
    tok = tiny_llm.tokenizer
    trie = TokenTrie(lines(tok))
    calls = {"log_softmax_many": 0, "log_softmax_over": 0, "tolist": 0}

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper

    for name in ("log_softmax_many", "log_softmax_over"):
        monkeypatch.setattr(TreeDecoder, name, counted(name, getattr(TreeDecoder, name)))
    monkeypatch.setattr(torch.Tensor, "tolist", counted("tolist", torch.Tensor.tolist))  # host transfers
    with torch.inference_mode():
        d = TreeDecoder(tiny_llm.model, prompt(tok))
        trie_logprobs(d, trie)
    assert calls == {"log_softmax_many": 1, "log_softmax_over": 0, "tolist": 1}
    assert d.forwards == 2 and len(d.tokens) == len(trie_feed(trie)[0])


def test_as_tensors_keeps_the_graph_and_the_values(tiny_llm):
    tok = tiny_llm.tokenizer
    trie = TokenTrie(lines(tok, 12))
    with torch.inference_mode():
        floats = trie_logprobs(TreeDecoder(tiny_llm.model, prompt(tok)), trie)
    tensors = trie_logprobs(TreeDecoder(tiny_llm.model, prompt(tok)), trie, as_tensors=True)
    loss = -torch.log_softmax(torch.stack([tensors[i] for i in range(12)]), dim=0)[3]
    loss.backward()
    grads = [p.grad for p in tiny_llm.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert np.allclose([float(tensors[i].detach()) for i in range(12)], [floats[i] for i in range(12)], atol=1e-6)


def test_vectorised_mask_matches_the_ancestor_paths(tiny_llm):
    """Nodes added over several calls, deep and wide: each node's hidden state equals a plain forward
    of prompt + its own path (the mask lets it see exactly its ancestors)."""
    tok = tiny_llm.tokenizer
    p = prompt(tok)
    with torch.inference_mode():
        d = TreeDecoder(tiny_llm.model, p)
        d.extend([5, 6, 7, 8], [ROOT, 0, 1, ROOT])
        d.extend([9, 10, 11], [2, 3, 5])
        for node in range(len(d.tokens)):
            ids = torch.tensor([p + d.path_tokens(node)])
            ref = tiny_llm.model.model(input_ids=ids).last_hidden_state[0, -1]
            assert torch.allclose(d.hidden_of(node), ref, atol=1e-5), node


def test_bad_parents_are_refused(tiny_llm):
    with torch.inference_mode():
        d = TreeDecoder(tiny_llm.model, prompt(tiny_llm.tokenizer))
        with pytest.raises(ValueError):
            d.extend([5], [3])
        with pytest.raises(ValueError):
            d.extend([5, 6], [ROOT])
