"""BatchTreeDecoder (B users' trees per model call) and the lock-step driver of decoding programs:
every read equals ``TreeDecoder``'s at batch 1, the node bound slices calls, and the batched forms of
tallrec, palr and genrec give the lists they give one user at a time."""
import random

import numpy as np
import pytest
import torch

from recdemo.llm.batch_score import batchable, score_lists
from recdemo.llm.rankers import RANKERS, get_ranker
from recdemo.llm.rankers.batch_tree import BatchTreeDecoder, run_lockstep, run_steps
from recdemo.llm.rankers.decoding import ROOT, TreeDecoder
from recdemo.llm.rankers.genrec import beam_steps
from recdemo.llm.rankers.palr import greedy_steps
from recdemo.llm.token_trie import TokenTrie
from recdemo.records import Candidate, RerankRequest


def random_prompts(vocab: int, lengths, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def random_extend(rng, n_nodes: int, size: int, vocab: int) -> tuple[list[int], list[int]]:
    """``size`` new nodes whose parents are ROOT, an old node or a node earlier in the same call."""
    tokens, parents = [], []
    for j in range(size):
        tokens.append(rng.randrange(3, vocab))
        parents.append(rng.choice([ROOT] + list(range(n_nodes + j))))
    return tokens, parents


@pytest.mark.parametrize("max_nodes", [1 << 30, 5])
@torch.inference_mode()
def test_batched_trees_read_what_one_tree_at_a_time_reads(tiny_llm, max_nodes):
    """Rows with prompts of different lengths (left padding) grow trees of different sizes over several
    calls (right padding; a row idles in one of them, another leaves); every read matches TreeDecoder."""
    vocab = len(tiny_llm.tokenizer)
    prompts = random_prompts(vocab, [7, 19, 3, 12])
    batch = BatchTreeDecoder(tiny_llm.model, prompts, max_nodes=max_nodes)
    alone = [TreeDecoder(tiny_llm.model, p) for p in prompts]
    rng = random.Random(1)
    for step, sizes in enumerate([(6, 1, 9, 3), (2, 0, 4, 5), (3, 2, 0, 1)]):
        if step == 2:
            batch.leave([1])
            sizes = (3, None, 0, 1)
        requests = {b: random_extend(rng, len(alone[b].tokens), n, vocab) for b, n in enumerate(sizes) if n}
        got = batch.extend_rows(requests)
        for b, (tokens, parents) in requests.items():
            assert got[b] == alone[b].extend(tokens, parents)
        reads = [(b, node, rng.sample(range(vocab), 4)) for b in requests for node in [ROOT] + got[b]]
        for (b, node, allowed), lps in zip(reads, batch.log_softmax_many(reads)):
            assert np.allclose(lps.numpy(), alone[b].log_softmax_over(node, allowed).numpy(), atol=1e-5)
    assert batch.largest_call <= max(max_nodes, len(batch.live))
    if max_nodes == 5:
        assert batch.forwards > 4  # the prompts + three calls, sliced
    batch.reset()
    assert batch.tokens == [[], [], [], []] and batch.cache.get_seq_length() == batch.width


@torch.inference_mode()
def test_lockstep_programs_equal_each_program_driven_alone(tiny_llm):
    """Greedy titles and beams over tries of different sizes: the lock-step run returns what each
    program returns on its own TreeDecoder, while the batch makes fewer model calls."""
    tok, vocab = tiny_llm.tokenizer, len(tiny_llm.tokenizer)
    titles = [f"{a} {b} Story" for a in ("Alpha", "Bravo", "Castle", "Delta") for b in ("Echo", "Forest", "Ghost")]
    ids = tok([t + "\n" for t in titles], add_special_tokens=False)["input_ids"]
    prompts = random_prompts(vocab, [9, 4, 15], seed=2)
    sizes = [12, 5, 8]
    for make in (lambda trie: greedy_steps(trie, 4), lambda trie: beam_steps(trie, 3)):
        batch = BatchTreeDecoder(tiny_llm.model, prompts)
        got = run_lockstep(batch, [make(TokenTrie(zip(ids[:n], range(n)))) for n in sizes])
        alone_forwards = 0
        for p, n, have in zip(prompts, sizes, got):
            decoder = TreeDecoder(tiny_llm.model, p)
            want = run_steps(decoder, make(TokenTrie(zip(ids[:n], range(n)))))
            alone_forwards += decoder.forwards
            assert [i for i, _ in have] == [i for i, _ in want]
            assert np.allclose([s for _, s in have], [s for _, s in want], atol=1e-5)
        assert len(got[0]) > 1 and batch.forwards < alone_forwards


def requests(dataset, retriever, n_users: int = 5) -> list[RerankRequest]:
    """Histories of different lengths (different prompt lengths) and candidate lists of different sizes."""
    out = []
    for u in range(n_users):
        history = [int(x) for x in dataset.sequences[u][:-1]][: 2 + 2 * u]
        n = [12, 5, 1, 9, 3][u % 5]
        top = retriever.top_k(history, n)
        out.append(RerankRequest(history=history, profile=None, k=min(4, n),
                                 candidates=[Candidate(i, s, r) for r, (i, s) in enumerate(top, 1)]))
    return out


@pytest.mark.parametrize("name", ["tallrec", "palr", "genrec"])
def test_batched_rankers_equal_one_user_at_a_time(name, tiny_llm, toy_dataset, pop_retriever, tmp_path):
    ranker = get_ranker(name, tiny_llm, toy_dataset, pop_retriever, fuse=False, fusion_dir=str(tmp_path))
    reqs = requests(toy_dataset, pop_retriever)
    assert batchable(ranker)
    batched = score_lists(ranker, reqs)
    for req, got in zip(reqs, batched):
        want = ranker.score_list(req)
        assert got.items == want.items
        assert np.allclose(got.llm, want.llm, atol=1e-5)
        assert np.argsort(-got.llm, kind="stable").tolist() == np.argsort(-want.llm, kind="stable").tolist()
        assert got.info["batch"] == len(reqs) and got.info["prompt_tokens"] == want.info["prompt_tokens"]
        for key in ("generated", "tree_tokens", "generated_tokens"):
            assert got.info.get(key) == want.info.get(key)
        if name == "palr":
            assert list(got.info["logprobs"]) == list(want.info["logprobs"])  # the same titles, in order
            assert np.allclose(list(got.info["logprobs"].values()), list(want.info["logprobs"].values()), atol=1e-5)
    assert len({tuple(s.llm.round(6)) for s in batched}) > 1  # different users, different scores
    if name == "genrec":  # the shared catalog trie is whole again afterwards
        assert len(ranker.catalog_trie()) == len(toy_dataset.catalog)


@pytest.mark.parametrize("name", ["score", "tallrec", "palr", "genrec"])
def test_the_node_bound_slices_calls_and_keeps_the_scores(name, tiny_llm, toy_dataset, pop_retriever, tmp_path,
                                                          monkeypatch):
    """``batch_tree_nodes`` bounds rows x nodes of every batched forward; a tight bound makes more,
    smaller calls and the same scores."""
    sizes = []
    forward = BatchTreeDecoder._forward

    def counting(self, chunk):
        sizes.append(sum(len(nodes) for nodes in chunk.values()))
        return forward(self, chunk)

    monkeypatch.setattr(BatchTreeDecoder, "_forward", counting)
    reqs = requests(toy_dataset, pop_retriever, 4)
    scores = {}
    for bound in (4096, 8):
        ranker = get_ranker(name, tiny_llm, toy_dataset, pop_retriever, fuse=False, fusion_dir=str(tmp_path),
                            batch_tree_nodes=bound)
        sizes.clear()
        scores[bound] = [s.llm for s in score_lists(ranker, reqs)]
        assert sizes and max(sizes) <= bound
        calls = len(sizes)
    assert calls > 1 and max(sizes) <= 8
    for a, b in zip(scores[4096], scores[8]):
        assert np.allclose(a, b, atol=1e-5)


def test_every_registered_ranker_batches():
    assert all(batchable(cls.__new__(cls)) for cls in RANKERS.values())
