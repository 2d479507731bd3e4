"""Prompt encoded once, answers decoded as a tree on top of its KV cache.

Every ranker asks the same question many times with the same prompt: "how likely is each of these
continuations?" (score, tallrec), "which token next?" (palr greedy, genrec beams). ``TreeDecoder``
encodes the prompt once and keeps its KV cache; continuation tokens are then appended as nodes of a
tree (each new token names its parent). One forward call takes any number of new nodes packed into
one row: a 4-D attention mask lets each node see the prompt and its own ancestors only, and its
position id is its depth, so the result equals running each root-to-node path on its own after the
prompt (tests/llm/test_rankers.py checks this against plain full forwards). Where the KV lives and
how a packed call runs is the backend's (``tree_kv``: eager DynamicCache, or a static preallocated
cache with padded calls, captured as CUDA graphs on a GPU); ``backend=`` takes the values of
``LLMConfig.decode_backend``.

Logits are computed only for the tokens a caller asks about (``logits(rows, token_ids)``):
constrained decoding renormalises over the allowed tokens, so the 49k-way output projection
of every position (the largest single cost for short continuations) is never needed.
``log_softmax_many`` reads many constrained distributions with one matmul (over the union of
their tokens) and leaves them on the device; ``trie_logprobs`` uses it, so scoring a trie costs one
read and one device -> host transfer however many branching points it has.
"""
from __future__ import annotations

from typing import Sequence

import torch

from recdemo.llm.models import model_parts
from recdemo.llm.rankers.tree_kv import make_kv, to_device

ROOT = -1  # parent id of a token that directly follows the prompt


class TreeDecoder:
    def __init__(self, model, prompt_ids: Sequence[int], device=None, backend: str = "eager", reserve: int = 0):
        """``backend``: eager | static | graphs | auto (``tree_kv``); ``reserve``: about how many nodes
        the caller will add (a static cache is sized for them; it grows if the guess is short)."""
        self.decoder, self.head = model_parts(model)
        self.device = device or next(model.parameters()).device
        self.prompt = [int(t) for t in prompt_ids]
        if not self.prompt:
            raise ValueError("the prompt is empty")
        self.tokens: list[int] = []  # node id -> token
        self.parents: list[int] = []  # node id -> parent node id (ROOT for the first answer token)
        self.depth: list[int] = []
        self.paths: list[list[int]] = []  # node id -> node ids from the root down to itself
        self.forwards = 0  # model calls, for benchmarks
        self.kv = make_kv(self.decoder, self.device, backend, reserve)
        prompt_hidden = self.kv.prefill(self.prompt)
        self.forwards += 1
        self.root_hidden = prompt_hidden[-1]  # predicts the first answer token
        self.dtype = self.root_hidden.dtype
        self.hidden: list[torch.Tensor | None] = []  # node id -> last hidden state (predicts its child)

    @property
    def n_prompt(self) -> int:
        return len(self.prompt)

    @property
    def cache(self):
        """The backend's transformers Cache (prompt + every node fed so far, in node-id order)."""
        return self.kv.cache

    @property
    def backend(self) -> str:
        """The backend that runs (``auto`` resolved; graphs without CUDA run as static)."""
        return self.kv.backend

    def path_tokens(self, node: int) -> list[int]:
        return [] if node == ROOT else [self.tokens[i] for i in self.paths[node]]

    def hidden_of(self, node: int) -> torch.Tensor:
        return self.root_hidden if node == ROOT else self.hidden[node]

    # -- growing the tree --
    def extend(self, tokens: Sequence[int], parents: Sequence[int]) -> list[int]:
        """Append nodes (a parent is ROOT, an existing node, or a node earlier in this call);
        runs the model once and returns the new node ids."""
        if len(tokens) != len(parents):
            raise ValueError("tokens and parents must have the same length")
        if not tokens:
            return []
        first = len(self.tokens)
        for t, p in zip(tokens, parents):
            if p != ROOT and not (0 <= p < len(self.tokens)):
                raise ValueError(f"parent {p} does not exist (yet)")
            node = len(self.tokens)
            self.tokens.append(int(t))
            self.parents.append(int(p))
            self.depth.append(0 if p == ROOT else self.depth[p] + 1)
            self.paths.append(([] if p == ROOT else self.paths[p]) + [node])
            self.hidden.append(None)
        new = list(range(first, len(self.tokens)))
        self._forward(new)
        return new

    def _forward(self, new: list[int]) -> None:
        P, first = self.n_prompt, new[0]
        assert self.kv.length == P + first, "the cache and the node list are out of step"
        # (row, KV column) of every ancestor of every new node, itself included: one indexed write
        rows = [row for row, node in enumerate(new) for _ in self.paths[node]]
        cols = [P + a for node in new for a in self.paths[node]]
        hidden = self.kv.extend([self.tokens[i] for i in new], [P + self.depth[i] for i in new], rows, cols,
                                self.dtype)
        self.forwards += 1
        for row, node in enumerate(new):
            self.hidden[node] = hidden[row]

    def reset(self) -> None:
        """Drop every answer node and keep the prompt (its cache is reused as is)."""
        self.kv.rewind(self.n_prompt)
        self.tokens, self.parents, self.depth, self.paths, self.hidden = [], [], [], [], []

    # -- reading scores --
    def logits(self, nodes: Sequence[int], token_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Next-token logits after each node ([len(nodes), len(token_ids)]; all tokens when None)."""
        h = torch.stack([self.hidden_of(n) for n in nodes])
        if token_ids is None:
            return self.head(h).float()
        return project(self.head, h, torch.as_tensor(list(token_ids), device=h.device, dtype=torch.long))

    def log_softmax_over(self, node: int, token_ids: Sequence[int]) -> torch.Tensor:
        """Log-probabilities renormalised over ``token_ids`` (the constrained distribution)."""
        return torch.log_softmax(self.logits([node], token_ids)[0], dim=-1)

    def log_softmax_many(self, reads: Sequence[tuple[int, Sequence[int]]]) -> torch.Tensor:
        """``log_softmax_over(node, token_ids)`` for every (node, token_ids) in ``reads`` at once: one
        gather of hidden states, one matmul over the union of the tokens, no host transfer.
        Returns [len(reads), longest] on the device; row r holds read r's values first, -inf after."""
        h = torch.stack([self.hidden_of(n) for n, _ in reads])
        return constrained_log_softmax(self.head, h, [toks for _, toks in reads])


def project(head, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``h``'s logits for the vocabulary entries ``ids`` only, in float32."""
    if type(head) is torch.nn.Linear:  # only the rows we need of the 49k x d projection
        out = h @ head.weight[ids].T
        if head.bias is not None:
            out = out + head.bias[ids]
        return out.float()
    return head(h)[:, ids].float()  # a wrapped head (e.g. LoRA on lm_head): full projection


def constrained_log_softmax(head, h: torch.Tensor, allowed: Sequence[Sequence[int]]) -> torch.Tensor:
    """Row r of ``h`` renormalised over its ``allowed[r]`` tokens: one matmul over the union of the
    tokens, no host transfer (``TreeDecoder`` and ``BatchTreeDecoder`` read through it).
    Returns [rows, longest] on the device; row r holds its values first, -inf after."""
    union = sorted({int(t) for toks in allowed for t in toks})
    col = {t: j for j, t in enumerate(union)}
    width = max(len(toks) for toks in allowed)
    cols = [[col[int(t)] for t in toks] + [0] * (width - len(toks)) for toks in allowed]
    valid = [[True] * len(toks) + [False] * (width - len(toks)) for toks in allowed]
    picked = project(head, h, to_device(union, h.device)).gather(1, to_device(cols, h.device))
    picked = picked.masked_fill(~to_device(valid, h.device, torch.bool), float("-inf"))
    return torch.log_softmax(picked, dim=-1)


def trie_logprobs(decoder: TreeDecoder, trie, max_nodes: int = 2048, as_tensors: bool = False) -> dict:
    """Constrained log-probability of every item in ``trie`` as the answer after the prompt:
    log P(path) with each choice renormalised over the tokens the trie allows there. Floats, or
    with ``as_tensors`` 0-d tensors that keep the graph (fine-tuning task ``rank`` trains on them).

    Only the branching points need the model: a title is fed up to its last branch (where it
    becomes unique); what follows is forced (probability 1 under the constraint) and never run.
    All needed nodes go through the model packed in ``ceil(nodes / max_nodes)`` forward calls; every
    branching point's distribution is then read at once (``log_softmax_many``, one host transfer)
    when the decoder offers it, else one ``log_softmax_over`` per branching point, in walk order."""
    feed, index, nodes = _walk(trie)
    # 1. run the nodes (parents always come before children in ``feed``)
    base = len(decoder.tokens)  # node ids are handed out in order: feed[j] becomes node base + j
    node_of = {ROOT: ROOT, **{j: base + j for j in range(len(feed))}}
    for start in range(0, len(feed), max_nodes):
        chunk = feed[start:start + max_nodes]
        decoder.extend([p[-1] for p, _ in chunk], [node_of[parent] for _, parent in chunk])
    # 2. one constrained softmax per branching node (every one is fed: it is in ``nodes``), shared
    # by every item below it
    branches = [(j, node, list(node.children)) for j, node in [(ROOT, trie.root)] + list(enumerate(nodes))
                if len(node.children) > 1 or (node.children and node.values)]
    lps = _read(decoder, [(node_of[j], tokens) for j, _, tokens in branches], as_tensors)
    at = {id(node): dict(zip(tokens, row)) for (_, node, tokens), row in zip(branches, lps)}
    # 3. every item's log-probability: the sum of the choices on its path, from the root down
    out: dict[int, object] = {}
    stack = [(trie.root, 0.0)]
    while stack:
        node, logp = stack.pop()
        for v in node.values:
            out[v] = logp
        choices = at.get(id(node))
        for t, child in node.children.items():
            stack.append((child, logp + choices[t] if choices else logp))
    return out


def _read(decoder, reads: list[tuple[int, list[int]]], as_tensors: bool) -> list[list]:
    """Each read's log-probabilities: floats (one host transfer), or tensors that keep the graph."""
    if not reads:
        return []
    if hasattr(decoder, "log_softmax_many"):
        rows = decoder.log_softmax_many(reads)
        if as_tensors:
            return [rows[r, :len(toks)].unbind(0) for r, (_, toks) in enumerate(reads)]
        values = rows.tolist()  # the one device -> host transfer
        return [values[r][:len(toks)] for r, (_, toks) in enumerate(reads)]
    rows = [decoder.log_softmax_over(node, toks) for node, toks in reads]  # a stand-in decoder (batch_score)
    return [row.unbind(0) if as_tensors else row.tolist() for row in rows]


def trie_feed(trie) -> tuple[list[tuple[tuple[int, ...], int]], dict[tuple[int, ...], int]]:
    """The nodes ``trie_logprobs`` runs: every prefix that ends at (or above) a branching point, as
    (token path, index of its parent in the list), parents first; and path -> index (ROOT for ())."""
    return _walk(trie)[:2]


def _walk(trie):
    """``trie_feed``'s two results and, per feed entry, its trie node."""
    feed: list[tuple[tuple[int, ...], int]] = []
    index: dict[tuple[int, ...], int] = {(): ROOT}
    nodes: list = []
    stack = [((), trie.root)]
    while stack:
        path, node = stack.pop()
        for t, child in node.children.items():
            cpath = path + (t,)
            if _branches_below(child):
                index[cpath] = len(feed)
                feed.append((cpath, index[path]))
                nodes.append(child)
                stack.append((cpath, child))
    return feed, index, nodes


def _branches_below(node) -> bool:
    """Does the model have to choose anything at or below ``node``?"""
    while True:
        if len(node.children) > 1 or (node.children and node.values):
            return True
        if not node.children:
            return False
        (node,) = node.children.values()
