"""Rankers for several users at once: ``score_lists`` / ``rank_batch`` (evaluation, coalesced reranks).

Every ranker serves one user per ``score_list``. On a GPU a 7B model at batch 1 is bound by reading
its weights once per call, so evaluation and busy serving gain by stacking users: B users' calls
read the weights once (rankers/batch_tree.py: ``BatchTreeDecoder``, B prompts and B trees).
``batchable`` says which rankers have a batched form: ``score`` (here) and every ranker with a
``score_many`` (tallrec, palr, genrec, in their own modules).

The ``score`` ranker batched: one forward for the B prompts (left-padded), one more for every row's
candidate-trie nodes (right-padded; more when rows x nodes exceed ``LLMConfig.batch_tree_nodes``),
then the constrained softmaxes of every branching node of every row in one matmul and one transfer.
Which nodes to feed and which distributions to read is decided by the project's own
``decoding.trie_logprobs``, run twice per user: first against a recorder (no model), then against a
replay that answers from the batched results. The scores equal ``score_list``'s up to float
rounding (tests/llm/test_batch_score.py, test_batch_tree.py check every ranker), so fusion weights
tuned at batch 1 still apply and evaluation metrics do not depend on the batch size.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from recdemo.records import RankedItem, RerankRequest
from recdemo.llm.rankers.base import ScoredList, check_request, finish
from recdemo.llm.rankers.batch_tree import NO_LIMIT, BatchTreeDecoder, pad_id
from recdemo.llm.rankers.decoding import ROOT, trie_logprobs


class _Recorder:
    """Stands in for ``TreeDecoder`` in trie_logprobs' first pass: notes the nodes it is asked to
    feed and the (node, allowed tokens) distributions it reads; answers zeros."""

    def __init__(self):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depth: list[int] = []
        self.reads: list[tuple[int, list[int]]] = []

    def extend(self, tokens, parents) -> list[int]:
        first = len(self.tokens)
        for t, p in zip(tokens, parents):
            self.tokens.append(int(t))
            self.parents.append(int(p))
            self.depth.append(0 if p == ROOT else self.depth[p] + 1)
        return list(range(first, len(self.tokens)))

    def log_softmax_over(self, node: int, token_ids) -> torch.Tensor:
        self.reads.append((int(node), [int(t) for t in token_ids]))
        return torch.zeros(len(token_ids))


class _Replay(_Recorder):
    """The second pass: the same calls, answered in order from the batched results."""

    def __init__(self, recorded: _Recorder, answers: list[torch.Tensor]):
        super().__init__()
        self.recorded, self.answers = recorded, iter(zip(recorded.reads, answers))

    def log_softmax_over(self, node: int, token_ids) -> torch.Tensor:
        (want_node, want_ids), answer = next(self.answers)
        if want_node != node or want_ids != [int(t) for t in token_ids]:
            raise RuntimeError("trie_logprobs asked for a different distribution on replay")
        return answer


def batched_tree_logprobs(decoder: BatchTreeDecoder, trees: list[_Recorder]) -> list[list[torch.Tensor]]:
    """Feed every row's recorded tree (one forward for all rows, slices past ``max_nodes``) and answer
    every recorded read in one batch. Returns one list of log-probability tensors (CPU, float32) per
    row, in read order."""
    recorded = {b: (t.tokens, t.parents) for b, t in enumerate(trees) if t.tokens}
    decoder.extend_rows(recorded)
    reads = [(b, node, toks) for b, tree in enumerate(trees) for node, toks in tree.reads]
    answers: list[list[torch.Tensor]] = [[] for _ in trees]
    for (b, _, _), lps in zip(reads, decoder.log_softmax_many(reads)):
        answers[b].append(lps)
    return answers


def batchable(ranker) -> bool:
    """Whether ``score_lists`` / ``rank_batch`` serve this ranker (evaluation and concurrent requests):
    ``score`` (here) and every ranker with a batched form of ``score_list`` (``score_many``)."""
    return getattr(ranker, "name", None) == "score" or callable(getattr(ranker, "score_many", None))


def score_lists(ranker, reqs: list[RerankRequest]) -> list[ScoredList]:
    """``ranker.score_list(req)`` for every request, batched (equal up to float rounding)."""
    if not batchable(ranker):
        raise ValueError(f"{getattr(ranker, 'name', ranker)!r} has no batched scoring")
    if getattr(ranker, "name", None) != "score":
        return ranker.score_many(reqs)
    outs = [ranker.candidate_list(r) for r in reqs]
    if not reqs:
        return outs
    start = time.perf_counter()
    with ranker.session() as (llm, adapter):
        prompts = [ranker.prompt_ids(r) for r in reqs]
        tries = [ranker.candidate_trie(o.items) for o in outs]
        recorders = []
        for trie in tries:
            recorders.append(_Recorder())
            trie_logprobs(recorders[-1], trie, max_nodes=NO_LIMIT)
        decoder = BatchTreeDecoder(llm.model, prompts, device=llm.device, pad_id=pad_id(llm.tokenizer),
                                   max_nodes=ranker.cfg.batch_tree_nodes)
        answers = batched_tree_logprobs(decoder, recorders)
    seconds = time.perf_counter() - start
    for out, trie, rec, ans, prompt in zip(outs, tries, recorders, answers, prompts):
        logp = trie_logprobs(_Replay(rec, ans), trie, max_nodes=NO_LIMIT)
        out.llm = np.array([logp[i] for i in out.items], dtype=np.float64)
        out.info = {"adapter": adapter, "prompt_tokens": len(prompt), "tree_tokens": len(rec.tokens),
                    "forwards": decoder.forwards, "batch": len(reqs), "llm_seconds": seconds}
    return outs


def rank_batch(ranker, reqs: list[RerankRequest]) -> list[list[RankedItem]]:
    """``ranker.rank(req)`` for every request: batched scores, then the same fusion as at batch 1."""
    for req in reqs:
        check_request(req, needs_candidates=ranker.name != "genrec")
    scored = score_lists(ranker, reqs)
    results = []
    for req, s in zip(reqs, scored):
        weight, method = 1.0, "rank"
        if ranker.fuse and s.sasrec is not None:
            weight, method, _ = ranker.fusion_weight(s.info.get("adapter"))
        results.append(finish(s, req.k, weight, method))
    return results
