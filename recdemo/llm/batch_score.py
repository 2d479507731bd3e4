"""The ``score`` ranker for several users at once: B prompts in one forward, B candidate tries in one more.

``ScoreRanker.score_list`` serves one user with two model calls (the prompt, then every candidate
title's branching tokens packed on top of the prompt's KV cache; see rankers/score.py and tree.py).
On a GPU a 7B model at batch 1 is bound by reading its weights once per call, so evaluation and
busy serving gain by stacking users: the same two calls for B users read the weights once.

- Call 1: the B prompts, left-padded to the longest; a 4-D mask keeps each row causal over its own
  tokens, and position ids count from each prompt's first real token.
- Call 2: each row's trie nodes (right-padded), on top of call 1's cache; a node sees its own
  prompt and its ancestors only, at position prompt length + depth (as ``TreeDecoder`` does).
- The constrained softmaxes of every branching node of every row: one matmul against the rows of
  the output projection they need, one transfer to the CPU.

Which nodes to feed and which distributions to read is decided by the project's own
``tree.trie_logprobs``, run twice per user: first against a recorder (no model), then against a
replay that answers from the batched results. The scores equal ``score_list``'s up to float
rounding (tests/test_batch_score.py checks it), so fusion weights tuned at batch 1 still apply.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from recdemo.records import RankedItem, RerankRequest
from recdemo.llm.rankers.base import ScoredList, check_request, finish
from recdemo.llm.rankers.decoding import ROOT, model_parts, trie_logprobs

NO_LIMIT = 1 << 30  # trie_logprobs' max_nodes: one packed call per user (the batch is the chunk)


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


def batched_tree_logprobs(model, prompts: list[list[int]], trees: list[_Recorder], device, pad_id: int = 0):
    """Run the B prompts, then the B recorded trees, and answer every recorded read.

    Returns one list of log-probability tensors (CPU, float32) per row, in read order."""
    decoder, head = model_parts(model)
    dtype = next(decoder.parameters()).dtype
    low = torch.finfo(dtype).min
    B, L = len(prompts), max(len(p) for p in prompts)
    # Call 1: left-padded prompts; padding positions only see themselves (no all-masked rows).
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    pos = torch.zeros((B, L), dtype=torch.long)
    mask = torch.full((B, 1, L, L), low, dtype=dtype)
    causal = torch.triu(torch.full((L, L), low, dtype=dtype), diagonal=1)
    for b, p in enumerate(prompts):
        off = L - len(p)
        ids[b, off:] = torch.tensor(p)
        pos[b, off:] = torch.arange(len(p))
        mask[b, 0, off:, off:] = causal[: len(p), : len(p)]
        mask[b, 0, range(off), range(off)] = 0.0
    out = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                  use_cache=True)
    root = out.last_hidden_state[:, -1]  # [B, d]: predicts each row's first answer token
    # Call 2: every row's trie nodes, right-padded; a node sees its prompt and its ancestors.
    T = max(len(t.tokens) for t in trees)
    hidden = None
    if T:
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        mask = torch.full((B, 1, T, L + T), low, dtype=dtype)
        for b, (p, tree) in enumerate(zip(prompts, trees)):
            off = L - len(p)
            mask[b, 0, :, off:L] = 0.0
            mask[b, 0, range(T), [L + j for j in range(T)]] = 0.0  # itself (padding nodes: only itself)
            for j, (t, parent) in enumerate(zip(tree.tokens, tree.parents)):
                ids[b, j], pos[b, j] = t, len(p) + tree.depth[j]
                while parent != ROOT:
                    mask[b, 0, j, L + parent] = 0.0
                    parent = tree.parents[parent]
        out = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                      past_key_values=out.past_key_values, use_cache=True)
        hidden = out.last_hidden_state  # [B, T, d]
    # Every read of every row: gather hidden states, one matmul over the union of allowed tokens.
    reads = [(b, node, toks) for b, tree in enumerate(trees) for node, toks in tree.reads]
    if not reads:
        return [[] for _ in trees]
    h = torch.stack([root[b] if node == ROOT else hidden[b, node] for b, node, _ in reads])
    union = sorted({t for _, _, toks in reads for t in toks})
    col = {t: j for j, t in enumerate(union)}
    width = max(len(toks) for _, _, toks in reads)
    cols = torch.zeros((len(reads), width), dtype=torch.long)
    valid = torch.zeros((len(reads), width), dtype=torch.bool)
    for r, (_, _, toks) in enumerate(reads):
        cols[r, : len(toks)] = torch.tensor([col[t] for t in toks])
        valid[r, : len(toks)] = True
    union_ids = torch.tensor(union, device=h.device)
    if type(head) is torch.nn.Linear:  # only the rows needed of the vocab x d projection
        logits = h @ head.weight[union_ids].T
        if head.bias is not None:
            logits = logits + head.bias[union_ids]
    else:  # a wrapped head (e.g. LoRA on lm_head): the full projection
        logits = head(h)[:, union_ids]
    picked = logits.float().gather(1, cols.to(h.device)).masked_fill(~valid.to(h.device), float("-inf"))
    lps = torch.log_softmax(picked, dim=-1).cpu()  # the one device -> host transfer
    answers: list[list[torch.Tensor]] = [[] for _ in trees]
    for r, (b, _, toks) in enumerate(reads):
        answers[b].append(lps[r, : len(toks)])
    return answers


def batchable(ranker) -> bool:
    """Whether ``score_lists`` / ``rank_batch`` serve this ranker (evaluation and concurrent requests)."""
    return getattr(ranker, "name", None) == "score"


def score_lists(ranker, reqs: list[RerankRequest]) -> list[ScoredList]:
    """``ranker.score_list(req)`` for every request (a ``score`` ranker), in two model calls."""
    if not batchable(ranker):
        raise ValueError(f"batched scoring needs the 'score' ranker, not {getattr(ranker, 'name', ranker)!r}")
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
        pad = llm.tokenizer.pad_token_id if llm.tokenizer.pad_token_id is not None else 0
        answers = batched_tree_logprobs(llm.model, prompts, recorders, llm.device, pad)
    seconds = time.perf_counter() - start
    for out, trie, rec, ans, prompt in zip(outs, tries, recorders, answers, prompts):
        logp = trie_logprobs(_Replay(rec, ans), trie, max_nodes=NO_LIMIT)
        out.llm = np.array([logp[i] for i in out.items], dtype=np.float64)
        out.info = {"adapter": adapter, "prompt_tokens": len(prompt), "tree_tokens": len(rec.tokens),
                    "forwards": 2, "batch": len(reqs), "llm_seconds": seconds}
    return outs


def rank_batch(ranker, reqs: list[RerankRequest]) -> list[list[RankedItem]]:
    """``ranker.rank(req)`` for every request: batched scores, then the same fusion as at batch 1."""
    for req in reqs:
        check_request(req)
    scored = score_lists(ranker, reqs)
    results = []
    for req, s in zip(reqs, scored):
        weight, method = 1.0, "rank"
        if ranker.fuse and s.sasrec is not None:
            weight, method, _ = ranker.fusion_weight(s.info.get("adapter"))
        results.append(finish(s, req.k, weight, method))
    return results
