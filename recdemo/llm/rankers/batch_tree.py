"""Several users' decoding trees in one model call: ``BatchTreeDecoder`` and the lock-step driver.

``TreeDecoder`` (decoding.py) serves one user: its prompt once, then answer tokens as nodes of a
tree packed on top of the prompt's KV cache. On a GPU a large model at batch 1 is bound by reading
its weights once per call, so evaluation and busy serving gain by stacking users: B rows, each its
own prompt and its own tree, every call feeding every row's new nodes.

- The prompts, left-padded to the longest: a 4-D mask keeps each row causal over its own tokens,
  position ids count from each prompt's first real token (padding sees only itself).
- Each ``extend_rows`` call: every row's new nodes, right-padded; a node sees its own prompt and its
  ancestors only, at position prompt length + depth (as ``TreeDecoder`` does); padding nodes see
  only themselves and nothing ever sees them. Rows that have nothing to feed idle (padding).
- ``max_nodes`` bounds rows x new nodes of one forward (the [rows, 1, nodes, cache + nodes] mask and
  the activations): a bigger request is fed in slices of ``max_nodes // rows`` nodes per row.
- Reads (constrained softmaxes of any rows' nodes): one gather, one matmul against the rows of the
  output projection they need, one transfer to the CPU.
- ``leave(rows)``: finished rows drop out of the cache, so later calls run only the live ones.

Decoding programs. ``palr`` (greedy titles) and ``genrec`` (beams) decide step by step what to feed
from what they read. Each algorithm is written once, as a generator that yields requests:
``("read", [(node, allowed tokens), ...])`` (answered with one log-probability tensor per pair)
and ``("extend", tokens, parents)`` (answered with the new node ids). ``run_steps`` answers them one
by one with a ``TreeDecoder`` (batch 1: the very calls the ranker made before); ``run_lockstep``
drives one program per row of a ``BatchTreeDecoder``: it answers every row's pending reads in one
batch, then every row's pending extend in one forward, and so on until every program has returned.
"""
from __future__ import annotations

from typing import Generator, Sequence

import torch

from recdemo.llm.models import model_parts
from recdemo.llm.rankers.decoding import ROOT, constrained_log_softmax

NO_LIMIT = 1 << 30

Program = Generator[tuple, object, object]


class BatchTreeDecoder:
    def __init__(self, model, prompts: Sequence[Sequence[int]], device=None, pad_id: int = 0,
                 max_nodes: int = NO_LIMIT):
        self.decoder, self.head = model_parts(model)
        self.device = device or next(model.parameters()).device
        self.prompts = [[int(t) for t in p] for p in prompts]
        if not self.prompts or not all(self.prompts):
            raise ValueError("every row needs a non-empty prompt")
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be at least 1, got {max_nodes}")
        self.pad_id, self.max_nodes = int(pad_id), int(max_nodes)
        self.dtype = next(self.decoder.parameters()).dtype
        B = len(self.prompts)
        self.width = max(map(len, self.prompts))  # cache slots of the padded prompts
        self.live = list(range(B))  # batch position -> row
        self.tokens: list[list[int]] = [[] for _ in range(B)]  # row -> node id -> token
        self.parents: list[list[int]] = [[] for _ in range(B)]
        self.depth: list[list[int]] = [[] for _ in range(B)]
        self.paths: list[list[list[int]]] = [[] for _ in range(B)]  # node -> node ids root..itself
        self.slot: list[list[int]] = [[] for _ in range(B)]  # node -> its cache position
        self.hidden: list[list[torch.Tensor | None]] = [[] for _ in range(B)]
        self.forwards = 0  # model calls, for benchmarks and tests
        self.largest_call = 0  # most rows x nodes fed in one call (the bound's check)
        self._prompt_forward()

    def _prompt_forward(self) -> None:
        B, L = len(self.prompts), self.width
        low = torch.finfo(self.dtype).min
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        pos = torch.zeros((B, L), dtype=torch.long)
        mask = torch.full((B, 1, L, L), low, dtype=self.dtype)
        causal = torch.triu(torch.full((L, L), low, dtype=self.dtype), diagonal=1)
        for b, p in enumerate(self.prompts):
            off = L - len(p)
            ids[b, off:] = torch.tensor(p)
            pos[b, off:] = torch.arange(len(p))
            mask[b, 0, off:, off:] = causal[: len(p), : len(p)]
            mask[b, 0, range(off), range(off)] = 0.0  # padding sees itself: no all-masked row
        out = self.decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                           position_ids=pos.to(self.device), use_cache=True)
        self.forwards += 1
        self.cache = out.past_key_values
        self.root_hidden = out.last_hidden_state[:, -1].contiguous()  # row -> predicts its first answer token

    @property
    def rows(self) -> int:
        return len(self.prompts)

    def hidden_of(self, row: int, node: int) -> torch.Tensor:
        return self.root_hidden[row] if node == ROOT else self.hidden[row][node]

    # -- growing the trees --
    def extend_rows(self, requests: dict[int, tuple[Sequence[int], Sequence[int]]]) -> dict[int, list[int]]:
        """``{row: (tokens, parents)}`` -> ``{row: new node ids}``: every row's new nodes (parents as in
        ``TreeDecoder.extend``) in one forward call, or in slices when rows x nodes exceed ``max_nodes``."""
        new: dict[int, list[int]] = {}
        for row, (tokens, parents) in requests.items():
            if row not in self.live:
                raise ValueError(f"row {row} has left the batch")
            new[row] = self._add_nodes(row, tokens, parents)
        longest = max((len(ids) for ids in new.values()), default=0)
        per_row = max(1, self.max_nodes // len(self.live)) if self.live else 1
        for start in range(0, longest, per_row):
            self._forward({row: ids[start:start + per_row] for row, ids in new.items() if ids[start:start + per_row]})
        return new

    def _add_nodes(self, row: int, tokens: Sequence[int], parents: Sequence[int]) -> list[int]:
        if len(tokens) != len(parents):
            raise ValueError("tokens and parents must have the same length")
        first = len(self.tokens[row])
        for t, p in zip(tokens, parents):
            if p != ROOT and not (0 <= p < len(self.tokens[row])):
                raise ValueError(f"parent {p} does not exist (yet) in row {row}")
            node = len(self.tokens[row])
            self.tokens[row].append(int(t))
            self.parents[row].append(int(p))
            self.depth[row].append(0 if p == ROOT else self.depth[row][p] + 1)
            self.paths[row].append(([] if p == ROOT else self.paths[row][p]) + [node])
            self.slot[row].append(-1)
            self.hidden[row].append(None)
        return list(range(first, len(self.tokens[row])))

    def _forward(self, chunk: dict[int, list[int]]) -> None:
        B, T = len(self.live), max(len(nodes) for nodes in chunk.values())
        S, L = self.cache.get_seq_length(), self.width
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        see = torch.zeros((B, T, S + T), dtype=torch.bool)
        see[:, range(T), [S + j for j in range(T)]] = True  # every column sees itself (padding: only itself)
        for i, row in enumerate(self.live):
            nodes = chunk.get(row, [])
            for j, node in enumerate(nodes):
                self.slot[row][node] = S + j
            see[i, : len(nodes), L - len(self.prompts[row]):L] = True  # its own prompt ...
            for j, node in enumerate(nodes):
                ids[i, j], pos[i, j] = self.tokens[row][node], len(self.prompts[row]) + self.depth[row][node]
                see[i, j, [self.slot[row][a] for a in self.paths[row][node]]] = True  # ... and its ancestors
        mask = torch.zeros((B, 1, T, S + T), dtype=self.dtype).masked_fill(~see[:, None], torch.finfo(self.dtype).min)
        out = self.decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                           position_ids=pos.to(self.device), past_key_values=self.cache, use_cache=True)
        self.forwards += 1
        self.largest_call = max(self.largest_call, sum(len(nodes) for nodes in chunk.values()))
        self.cache = out.past_key_values
        for i, row in enumerate(self.live):
            for j, node in enumerate(chunk.get(row, [])):
                self.hidden[row][node] = out.last_hidden_state[i, j]

    def reset(self) -> None:
        """Drop every row's answer nodes and keep the prompts (their cache is reused as is)."""
        extra = self.cache.get_seq_length() - self.width
        if extra > 0:
            self.cache.crop(-extra)
        for per_row in (self.tokens, self.parents, self.depth, self.paths, self.slot, self.hidden):
            for lst in per_row:
                lst.clear()

    def leave(self, rows) -> None:
        """Finished rows drop out of the batch: later calls neither feed nor attend over them."""
        keep = [i for i, row in enumerate(self.live) if row not in set(rows)]
        if len(keep) == len(self.live):
            return
        if keep:
            self.cache.batch_select_indices(torch.tensor(keep, device=self.device))
        self.live = [self.live[i] for i in keep]

    # -- reading scores --
    def log_softmax_many(self, reads: Sequence[tuple[int, int, Sequence[int]]]) -> list[torch.Tensor]:
        """Log-probabilities renormalised over each read's tokens, for ``(row, node, token_ids)`` reads
        (node ROOT: the row's first answer token): one matmul, one transfer; CPU float32 tensors."""
        if not reads:
            return []
        h = torch.stack([self.hidden_of(row, node) for row, node, _ in reads])
        lps = constrained_log_softmax(self.head, h, [toks for _, _, toks in reads]).cpu()  # the one transfer
        return [lps[r, : len(toks)] for r, (_, _, toks) in enumerate(reads)]


def pad_id(tokenizer) -> int:
    """The token id padding positions hold (never attended to, so any id would do)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def run_steps(decoder, program: Program):
    """Drive one decoding program with a ``TreeDecoder``: each request answered as it comes."""
    answer = None
    while True:
        try:
            request = program.send(answer)
        except StopIteration as stop:
            return stop.value
        if request[0] == "read":
            answer = [decoder.log_softmax_over(node, allowed) for node, allowed in request[1]]
        else:
            answer = decoder.extend(request[1], request[2])


def run_lockstep(decoder: BatchTreeDecoder, programs: Sequence[Program]) -> list:
    """Drive ``programs[row]`` on row ``row`` of ``decoder``, all in lock step; returns their results.

    Each round answers every pending read of every row in one batch (repeated while some row reads
    again), then feeds every row's pending extend in one forward; rows whose program returned leave."""
    if len(programs) != decoder.rows:
        raise ValueError(f"{len(programs)} programs for {decoder.rows} rows")
    results: list = [None] * len(programs)
    pending: dict[int, tuple] = {}
    done: list[int] = []

    def advance(row: int, answer) -> None:
        try:
            pending[row] = programs[row].send(answer)
        except StopIteration as stop:
            results[row] = stop.value
            pending.pop(row, None)
            done.append(row)

    for row in range(len(programs)):
        advance(row, None)
    while pending:
        reading = [row for row, request in pending.items() if request[0] == "read"]
        if reading:
            asked = {row: list(pending[row][1]) for row in reading}
            answers = iter(decoder.log_softmax_many([(row, n, a) for row in reading for n, a in asked[row]]))
            for row in reading:
                advance(row, [next(answers) for _ in asked[row]])
            continue
        decoder.leave(done)
        new = decoder.extend_rows({row: (request[1], request[2]) for row, request in pending.items()})
        for row in list(pending):
            advance(row, new[row])
    return results
