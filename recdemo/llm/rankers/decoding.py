"""Prompt encoded once, answers decoded as a tree on top of its KV cache.

Every ranker asks the same question many times with the same prompt: "how likely is each of these
continuations?" (score, tallrec), "which token next?" (palr greedy, genrec beams). ``TreeDecoder``
encodes the prompt once and keeps its KV cache; continuation tokens are then appended as nodes of a
tree (each new token names its parent). One forward call takes any number of new nodes packed into
one row: a 4-D attention mask lets each node see the prompt and its own ancestors only, and its
position id is its depth, so the result equals running each root-to-node path on its own after the
prompt (tests/llm/test_rankers.py checks this against plain full forwards).

Logits are computed only for the tokens a caller asks about (``logits(rows, token_ids)``):
constrained decoding renormalises over the allowed tokens, so the 49k-way output projection
of every position (the largest single cost for short continuations) is never needed.
"""
from __future__ import annotations

from typing import Sequence

import torch

ROOT = -1  # parent id of a token that directly follows the prompt


def model_parts(model):
    """(decoder stack, output projection) of a causal LM, also through a peft wrapper
    (peft injects LoRA layers in place, so the decoder runs with the active adapter)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


class TreeDecoder:
    def __init__(self, model, prompt_ids: Sequence[int], device=None):
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
        ids = torch.tensor([self.prompt], device=self.device)
        out = self.decoder(input_ids=ids, use_cache=True)
        self.forwards += 1
        self.cache = out.past_key_values
        self.root_hidden = out.last_hidden_state[0, -1]  # predicts the first answer token
        self.dtype = self.root_hidden.dtype
        self.hidden: list[torch.Tensor | None] = []  # node id -> last hidden state (predicts its child)

    @property
    def n_prompt(self) -> int:
        return len(self.prompt)

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
        n_past = self.cache.get_seq_length()  # prompt + every node fed so far, in node-id order
        P, first = self.n_prompt, new[0]
        mask = torch.full((len(new), n_past + len(new)), torch.finfo(self.dtype).min, dtype=self.dtype)
        mask[:, :P] = 0.0  # every node sees the whole prompt ...
        for row, node in enumerate(new):
            mask[row, [P + a for a in self.paths[node]]] = 0.0  # ... and its ancestors (itself included)
        ids = torch.tensor([[self.tokens[i] for i in new]], device=self.device)
        pos = torch.tensor([[P + self.depth[i] for i in new]], device=self.device)
        assert n_past == P + first, "the cache and the node list are out of step"
        out = self.decoder(input_ids=ids, attention_mask=mask[None, None].to(self.device), position_ids=pos,
                           past_key_values=self.cache, use_cache=True)
        self.forwards += 1
        self.cache = out.past_key_values
        for row, node in enumerate(new):
            self.hidden[node] = out.last_hidden_state[0, row]

    def reset(self) -> None:
        """Drop every answer node and keep the prompt (its cache is reused as is)."""
        if self.tokens:
            self.cache.crop(-len(self.tokens))
        self.tokens, self.parents, self.depth, self.paths, self.hidden = [], [], [], [], []

    # -- reading scores --
    def logits(self, nodes: Sequence[int], token_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Next-token logits after each node ([len(nodes), len(token_ids)]; all tokens when None)."""
        h = torch.stack([self.hidden_of(n) for n in nodes])
        if token_ids is None:
            return self.head(h).float()
        ids = torch.as_tensor(list(token_ids), device=h.device, dtype=torch.long)
        if type(self.head) is torch.nn.Linear:  # only the rows we need of the 49k x d projection
            out = h @ self.head.weight[ids].T
            if self.head.bias is not None:
                out = out + self.head.bias[ids]
            return out.float()
        return self.head(h)[:, ids].float()  # a wrapped head (e.g. LoRA on lm_head): full projection

    def log_softmax_over(self, node: int, token_ids: Sequence[int]) -> torch.Tensor:
        """Log-probabilities renormalised over ``token_ids`` (the constrained distribution)."""
        return torch.log_softmax(self.logits([node], token_ids)[0], dim=-1)


def trie_logprobs(decoder: TreeDecoder, trie, max_nodes: int = 2048, as_tensors: bool = False) -> dict:
    """Constrained log-probability of every item in ``trie`` as the answer after the prompt:
    log P(path) with each choice renormalised over the tokens the trie allows there. Floats, or
    with ``as_tensors`` 0-d tensors that keep the graph (fine-tuning task ``rank`` trains on them).

    Only the branching points need the model: a title is fed up to its last branch (where it
    becomes unique); what follows is forced (probability 1 under the constraint) and never run.
    All needed nodes go through the model packed in ``ceil(nodes / max_nodes)`` forward calls."""
    feed, index = trie_feed(trie)
    # 2. run them (parents always come before children in ``feed``)
    base = len(decoder.tokens)  # node ids are handed out in order: feed[j] becomes node base + j
    node_of = {ROOT: ROOT, **{j: base + j for j in range(len(feed))}}
    for start in range(0, len(feed), max_nodes):
        chunk = feed[start:start + max_nodes]
        decoder.extend([p[-1] for p, _ in chunk], [node_of[parent] for _, parent in chunk])
    # 3. one constrained softmax per branching node, shared by every item below it
    logp: dict[tuple[int, ...], object] = {(): 0.0}
    out: dict[int, object] = {}
    stack = [((), trie.root)]
    while stack:
        path, node = stack.pop()
        tokens = list(node.children)
        if len(tokens) > 1 or (tokens and node.values):
            lps = decoder.log_softmax_over(node_of[index[path]], tokens)
            lps = lps.unbind(0) if as_tensors else lps.tolist()
        else:
            lps = [0.0] * len(tokens)
        for v in node.values:
            out[v] = logp[path]
        for t, lp in zip(tokens, lps):
            cpath = path + (t,)
            logp[cpath] = logp[path] + lp
            stack.append((cpath, node.children[t]))
    return out


def trie_feed(trie) -> tuple[list[tuple[tuple[int, ...], int]], dict[tuple[int, ...], int]]:
    """The nodes ``trie_logprobs`` runs: every prefix that ends at (or above) a branching point, as
    (token path, index of its parent in the list), parents first; and path -> index (ROOT for ())."""
    feed: list[tuple[tuple[int, ...], int]] = []
    index: dict[tuple[int, ...], int] = {(): ROOT}
    stack = [((), trie.root)]
    while stack:
        path, node = stack.pop()
        for t, child in node.children.items():
            cpath = path + (t,)
            if _branches_below(child):
                index[cpath] = len(feed)
                feed.append((cpath, index[path]))
                stack.append((cpath, child))
    return feed, index


def _branches_below(node) -> bool:
    """Does the model have to choose anything at or below ``node``?"""
    while True:
        if len(node.children) > 1 or (node.children and node.values):
            return True
        if not node.children:
            return False
        (node,) = node.children.values()
