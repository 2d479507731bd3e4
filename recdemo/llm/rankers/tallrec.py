"""``tallrec``: "Will the user enjoy ITEM? Answer Yes or No." for every candidate; score = P(Yes).

Prompt: the ``tallrec`` template (history, then the question about one item); fine-tuning task
``tallrec``, whose answers are ``Yes`` / ``No`` followed by the end-of-answer token.
P(Yes) = softmax over the two answer tokens' logits at the end of the prompt (TALLRec).

The N prompts differ only from the item's title on. They are tokenized in full and their longest
common token prefix (the system text and the whole history) is encoded once; the N tails
(title + question end + assistant header, ~25 tokens each) are inserted into a token trie (tails
sharing a start share nodes) and run packed on top of the prefix's KV cache, a few candidates'
worth per forward call. Because the split point is found on the token ids, every tail is scored
on exactly the tokens the full prompt would have: the result equals N separate forward passes.

``score_many`` does the same for several users at once (batch_tree.py): one forward for every user's
shared prefix, then each forward feeds every user's next group of tails.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from recdemo.records import RerankRequest
from recdemo.llm import prompts as P
from recdemo.llm.token_trie import TokenTrie
from recdemo.llm.rankers.base import Ranker, ScoredList
from recdemo.llm.rankers.batch_tree import BatchTreeDecoder, pad_id
from recdemo.llm.rankers.decoding import ROOT, TreeDecoder

MAX_NODES_PER_CALL = 512  # bounds the attention matrix of one packed call (nodes x (prefix + nodes))


class TALLRecRanker(Ranker):
    name = "tallrec"
    template = "tallrec"

    def prompt(self, req: RerankRequest, item: int | None = None) -> str:
        items = self.candidate_list(req).items
        history = self.fitted_history(req, items)
        return self.text(history, items[0] if item is None else item)

    def text(self, history, item: int) -> str:
        return self.render(self.template, history=self.history_text(history),
                           target=P.prompt_title(self.catalog.titles[int(item)]))

    def fitted_history(self, req: RerankRequest, items: list[int]) -> list[int]:
        """The newest history items with which every candidate's prompt fits the context."""
        return self.fit_prompts(req, items)[0]

    def fit_prompts(self, req: RerankRequest, items: list[int]) -> tuple[list[int], list[list[int]]]:
        """(history kept, each candidate's prompt ids); the longest prompt decides."""
        return self.fit(lambda h: [self.encode_prompt(self.text(h, i)) for i in items], req.history,
                        size=lambda prompts: max(map(len, prompts), default=0))

    def answer_ids(self) -> tuple[int, int]:
        tok = self.tokenizer
        yes, no = (tok(w, add_special_tokens=False)["input_ids"] for w in (P.ANSWER_YES, P.ANSWER_NO))
        if not yes or not no or yes[0] == no[0]:
            raise ValueError("the tokenizer cannot tell the answers Yes and No apart")
        return yes[0], no[0]

    def score_list(self, req: RerankRequest) -> ScoredList:
        out = self.candidate_list(req)
        start = time.perf_counter()
        with self.session() as (llm, adapter):
            yes, no = self.answer_ids()
            prompts = self.fit_prompts(req, out.items)[1]
            n_shared = shared_prefix_length(prompts)
            decoder = TreeDecoder(llm.model, prompts[0][:n_shared], device=llm.device,
                                  backend=self.cfg.decode_backend)
            p_yes: dict[int, float] = {}
            tree_tokens = 0
            for group in _groups([p[n_shared:] for p in prompts], MAX_NODES_PER_CALL):
                decoder.reset()
                trie = TokenTrie((prompts[j][n_shared:], j) for j in group)
                leaf = feed_trie(decoder, trie)
                tree_tokens += len(decoder.tokens)
                logits = decoder.logits([leaf[j] for j in group], [yes, no])
                for j, p in zip(group, torch.softmax(logits, dim=-1)[:, 0].tolist()):
                    p_yes[j] = p
        out.llm = np.array([p_yes[j] for j in range(len(out.items))], dtype=np.float64)
        out.info = {"adapter": adapter, "prompt_tokens": n_shared, "tree_tokens": tree_tokens,
                    "forwards": decoder.forwards, "llm_seconds": time.perf_counter() - start}
        return out


    def score_many(self, reqs: list[RerankRequest]) -> list[ScoredList]:
        """``score_list`` for several users at once (batch_tree.py): one forward for every user's shared
        prefix, then each round one forward feeding every user's next group of tails (a trie per user and
        group, rows x nodes within ``batch_tree_nodes``), P(Yes) read at each tail's last node."""
        outs = [self.candidate_list(r) for r in reqs]
        rows = [b for b, o in enumerate(outs) if o.items]  # (no candidates: nothing to ask the model)
        if not rows:
            return outs
        start = time.perf_counter()
        with self.session() as (llm, adapter):
            yes, no = self.answer_ids()
            prompts = [self.fit_prompts(reqs[b], outs[b].items)[1] for b in rows]
            shared = [shared_prefix_length(p) for p in prompts]
            budget = max(1, min(MAX_NODES_PER_CALL, self.cfg.batch_tree_nodes // len(rows)))
            groups = [_groups([p[n:] for p in ps], budget) for ps, n in zip(prompts, shared)]
            decoder = BatchTreeDecoder(llm.model, [p[0][:n] for p, n in zip(prompts, shared)], device=llm.device,
                                       pad_id=pad_id(llm.tokenizer), max_nodes=self.cfg.batch_tree_nodes)
            p_yes = [dict() for _ in rows]
            tree_tokens = [0] * len(rows)
            for r in range(max(map(len, groups))):
                decoder.reset()
                decoder.leave([i for i, g in enumerate(groups) if r >= len(g)])
                feeds = {i: trie_nodes(TokenTrie((prompts[i][j][shared[i]:], j) for j in g[r]))
                         for i, g in enumerate(groups) if r < len(g)}
                decoder.extend_rows({i: (tokens, parents) for i, (tokens, parents, _) in feeds.items()})
                asked = [(i, j) for i in feeds for j in groups[i][r]]
                reads = [(i, feeds[i][2][j], (yes, no)) for i, j in asked]
                for (i, j), lps in zip(asked, decoder.log_softmax_many(reads)):
                    p_yes[i][j] = float(lps[0].exp())
                for i, (tokens, _, _) in feeds.items():
                    tree_tokens[i] += len(tokens)
        seconds = time.perf_counter() - start
        for i, b in enumerate(rows):
            outs[b].llm = np.array([p_yes[i][j] for j in range(len(outs[b].items))], dtype=np.float64)
            outs[b].info = {"adapter": adapter, "prompt_tokens": shared[i], "tree_tokens": tree_tokens[i],
                            "forwards": decoder.forwards, "batch": len(reqs), "llm_seconds": seconds}
        return outs


def shared_prefix_length(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving at least one token of every sequence after it."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return max(n, 1) if min(len(s) for s in seqs) > 1 else 0


def feed_trie(decoder: TreeDecoder, trie: TokenTrie) -> dict[int, int]:
    """Run every node of ``trie`` in one packed call; returns item -> the node of its last token."""
    tokens, parents, leaf = trie_nodes(trie, len(decoder.tokens))
    decoder.extend(tokens, parents)
    return leaf


def trie_nodes(trie: TokenTrie, base: int = 0) -> tuple[list[int], list[int], dict[int, int]]:
    """(tokens, parents, item -> node of its last token): every node of ``trie`` as new nodes of a
    decoder that holds ``base`` nodes (parents first)."""
    tokens, parents, leaf = [], [], {}
    stack = [(trie.root, ROOT)]
    while stack:
        node, parent = stack.pop()
        for t, child in node.children.items():
            tokens.append(t)
            parents.append(parent)
            me = base + len(tokens) - 1
            for v in child.values:
                leaf[v] = me
            stack.append((child, me))
    return tokens, parents, leaf


def _groups(tails: list[list[int]], budget: int) -> list[list[int]]:
    """Consecutive candidates whose tails add up to at most ``budget`` tokens (at least one each)."""
    groups, cur, size = [], [], 0
    for j, tail in enumerate(tails):
        if cur and size + len(tail) > budget:
            groups.append(cur)
            cur, size = [], 0
        cur.append(j)
        size += len(tail)
    if cur:
        groups.append(cur)
    return groups
