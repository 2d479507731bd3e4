"""Greedy decoding for every generation of the project (profiles, explanations), written out by hand.

Why not ``model.generate``: the prompts of one request share long starts (the 10 explanation prompts
share their header and the user's history; every profile prompt starts with the same instructions),
and on 2 CPU cores prefill is the cost (~1,200-1,700 tokens/s for SmolLM2-135M). So:

1. **Prefix cache** (across calls): KV of token prefixes already computed, in a bounded LRU keyed by
   the model and its active LoRA adapter (an adapter changes every K and V). A call starts from the
   longest cached prefix of its prompt.
2. **Shared prefixes** (within a call): the rows are grouped by common start (``prefix_groups``: one request's
   10 explanation prompts share header and history; the profile's prompt, merged into the same call,
   is a group of its own); each group's common prefix is prefilled once at batch 1 and its KV copied
   to the group's rows; only each row's own suffix is prefilled after it.
3. **Suffixes** of different lengths are left-padded *inside* the sequence (pads, prefix, pads, suffix):
   the attention mask hides the pads and position ids come from the mask (cumsum - 1), so each row
   sees exactly its own tokens at its own positions, as if it ran alone. Eager: rows whose suffixes
   differ a lot (an explanation's ~80 tokens, the profile's ~15) prefill in separate batches
   (``_buckets``: where the padding saved pays for one more forward): 23% of a request's prefill
   positions were pads, 5% after. The call's KV is allocated once (``_prefill_in_buckets``; on a CPU
   from ``kv_pool.KVPool``, memory kept from call to call, so its pages fault once, not every call):
   each bucket writes its rows' slice, right-aligned to the widest, and the decode batch is that KV as is.
4. **Decode**: one token per row per step (argmax); a row that is done (EOS, a stop string, the
   ``stop_when`` predicate, the token budget: each row its own, ``RowStop``) leaves the batch (a running
   row from the end takes its place, in place), so it costs nothing more, and is handed to ``on_row``
   at once (the page shows each explanation as its row finishes, not when the slowest one does).

Backends (``LLMConfig.decode_backend``): ``eager`` keeps a dynamic cache with room reserved for the
call's tokens (each step writes in place instead of concatenating) and drops finished rows;
``static`` preallocates the KV (StaticCache: fixed shapes, finished rows stay in the batch); ``graphs``
is ``static`` with the decode step under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: at
batch 1 a GPU decode step is bound by kernel launches, not by memory). ``auto``: graphs on CUDA,
eager on CPU. All give the same tokens (tests/llm/test_decode.py); graphs need CUDA, elsewhere they
fall back to static.
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, fields
from typing import Callable

import torch

from recdemo.llm.kv_pool import KVPool, fresh
from recdemo.llm.lookup import Lookup, accepted, draft
from recdemo.llm.models import model_parts

BACKENDS = ("auto", "eager", "static", "graphs")
STATIC_BUCKET = 64  # static caches are sized in steps of this many tokens: fewer distinct shapes to compile
RECENT_PROMPTS = 8  # earlier prompts (token ids only) a new prompt is compared with for a common start
# what one more prefill forward costs, in token positions: every weight is read once per forward
# (~20 ms for SmolLM2 on 2 cores, ~0.6 ms a position): a batch is split where that saves more padding
FORWARD_COST_POSITIONS = 32


def select_backend(requested: str, device: torch.device) -> str:
    """The backend that runs: ``auto`` is graphs on CUDA and eager elsewhere; graphs without CUDA
    run as static (the same preallocated cache, no graph capture)."""
    if requested not in BACKENDS:
        raise ValueError(f"decode backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    cuda = torch.device(device).type == "cuda"
    if requested == "auto":
        return "graphs" if cuda else "eager"
    if requested == "graphs" and not cuda:
        return "static"
    return requested


@dataclass
class DecodeStats:
    """What decoding computed, counted (not timed): a script reads it to compare before/after."""
    calls: int = 0
    rows: int = 0
    prompt_tokens: int = 0  # tokens of the prompts as given
    prefill_tokens: int = 0  # positions the model ran in prefill (pads included: they cost the same)
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    shared_tokens: int = 0  # prompt tokens saved by prefilling a call's shared prefix once
    new_tokens: int = 0
    decode_steps: int = 0
    decode_rows: int = 0  # rows run over all decode steps (a finished row leaves the eager batch)
    drafted_tokens: int = 0  # prompt-lookup drafts fed to decode steps (``lookup``)
    accepted_tokens: int = 0  # of those, the ones the model would have written: each saved a step

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- which adapter the model runs with (part of every cache key) --

def adapter_key(model) -> tuple | None:
    """The LoRA adapters active in ``model``'s layers, None for the bare base model. Read from the
    model itself, so no caller can forget it; peft's adapter names are versioned on reload
    (adapters.py), so a re-trained adapter never meets the KV of its old weights."""
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "active_adapters"):
            return None if getattr(module, "disable_adapters", False) else tuple(module.active_adapters)
    return None


# -- the cross-call prefix cache --

@dataclass
class _Entry:
    tokens: torch.Tensor  # 1-D int64 on the CPU
    kv: list  # per layer (keys, values), each [1, heads, len, head_dim]


def common_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the common start of two 1-D token tensors."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


class PrefixCache:
    """KV of token prefixes, least recently used first out, bounded in entries and total tokens.
    ``scope`` is (model, adapter): KV is never shared across them. Thread-safe."""

    def __init__(self, max_entries: int = 32, max_tokens: int = 4096, min_tokens: int = 16):
        self.max_entries, self.max_tokens, self.min_tokens = max_entries, max_tokens, min_tokens
        self._entries: OrderedDict = OrderedDict()  # (scope, tokens tuple) -> _Entry
        self._recent: dict = {}  # scope -> deque of recent prompts' token tensors
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def tokens(self) -> int:
        return sum(len(e.tokens) for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, scope, ids: torch.Tensor, limit: int) -> tuple[int, list | None]:
        """(n, KV of ids[:n]) for the cached entry sharing the longest start with ``ids[:limit]``."""
        best, best_key = 0, None
        with self._lock:
            for key, entry in self._entries.items():
                if key[0] == scope:
                    n = common_length(entry.tokens, ids[:limit])
                    if n > best:
                        best, best_key = n, key
            if best_key is None:
                self.misses += 1
                return 0, None
            self.hits += 1
            self._entries.move_to_end(best_key)
            kv = self._entries[best_key].kv
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in kv]

    def remember(self, scope, ids: torch.Tensor, kv: list) -> None:
        """Offer the KV of prompt ``ids`` (``kv``: batch 1, at least ``len(ids)`` long). Stored: the whole
        of it (the next call may continue it: the profile's second pass), and its common start with a
        recent prompt of the same scope (so the constant instructions of a prompt template become an
        entry of their own after two calls, without anyone declaring them)."""
        with self._lock:
            recent = self._recent.setdefault(scope, deque(maxlen=RECENT_PROMPTS))
            common = max((common_length(ids, r) for r in recent), default=0)
            recent.append(ids)
            for n in sorted({common, len(ids)}):
                if self.min_tokens <= n <= self.max_tokens:
                    self._put(scope, ids[:n], kv)

    def _put(self, scope, ids: torch.Tensor, kv: list) -> None:
        key = (scope, tuple(ids.tolist()))
        if key not in self._entries:  # copies: the entry must not pin (or share) a larger live buffer
            n = len(ids)
            self._entries[key] = _Entry(ids.clone(), [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in kv])
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries or self.tokens > self.max_tokens:
            self._entries.popitem(last=False)

    def retain(self, keep: Callable[[object], bool]) -> int:
        """Drop the entries whose scope ``keep`` refuses (an unloaded or re-registered adapter's);
        returns how many went."""
        with self._lock:
            gone = [key for key in self._entries if not keep(key[0])]
            for key in gone:
                del self._entries[key]
            for scope in [s for s in self._recent if not keep(s)]:
                del self._recent[scope]
        return len(gone)

    def clear(self) -> None:
        self.retain(lambda scope: False)


# -- one call: plan, prefill, decode --

@dataclass
class _Batch:
    """The state of a call while it decodes: the rows still running and their KV."""
    cache: object  # a transformers Cache
    mask: torch.Tensor  # [rows, kv positions] 1 = a real token (static: the cache's full width)
    length: int  # kv positions filled
    rows: list[int]  # which of the call's rows each batch row is
    next_ids: torch.Tensor  # [rows] the token each row emits next


def _forward(model, ids, mask, positions, cache, every: bool = False):
    """Logits of the last position only (the vocabulary projection of a 600-token prompt is wasted work),
    projected from a 2-D slice: through the LM's own ``logits_to_keep`` a frozen model copies its
    output weight once per row (``models.model_parts``), ~1.5 s of a 12-row prefill on 2 cores.
    ``every``: logits [rows, tokens, vocabulary] of every position fed (a step that checks drafts)."""
    decoder, head = model_parts(model)
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                     use_cache=True).last_hidden_state
    if every:
        return head(hidden.reshape(-1, hidden.shape[-1])).view(*hidden.shape[:2], -1)
    return head(hidden[:, -1, :])


def _growing_layer(room: int):
    """A transformers ``DynamicLayer`` that keeps ``room`` free positions past its tokens, so a decode
    step writes its token's K and V in place: the stock layer concatenates, copying every row's whole
    KV at every step of every layer (on 2 cores that was the largest cost of a 12-row decode step).
    ``keys``/``values`` stay views of the tokens so far, as transformers expects."""
    layer = _growing_layer_class()()
    layer.room = room
    return layer


@functools.cache
def _growing_layer_class():
    """The class, made once (transformers is imported lazily in this module)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        room = 0
        _buffers = None  # (keys, values) with room past the tokens; given (``_adopted_layer``) or made by ``update``

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, new = self.get_seq_length(), key_states.shape[-2]
            if self._buffers is None or n + new > self._buffers[0].shape[-2]:  # none yet, or out of room: move once
                shape = (*key_states.shape[:2], n + new + self.room, key_states.shape[-1])
                buffers = (key_states.new_empty(shape), value_states.new_empty(shape))
                for old, buffer in zip((self.keys, self.values), buffers):
                    if n:
                        buffer[:, :, :n] = old
                self._buffers = buffers
            for buffer, states in zip(self._buffers, (key_states, value_states)):
                buffer[:, :, n:n + new] = states
            self.keys, self.values = (buffer[:, :, :n + new] for buffer in self._buffers)
            return self.keys, self.values

        def batch_select_indices(self, indices):
            n = self.get_seq_length()
            if n > 0:
                self._buffers = tuple(buffer[indices] for buffer in self._buffers)
                self.keys, self.values = (buffer[:, :, :n] for buffer in self._buffers)

        def keep_first(self, rows: int, moves: list[tuple[int, int]]):
            """Keep the first ``rows`` rows after copying row ``a`` into row ``b`` for each (a, b) of
            ``moves``, in place: the memory stays (selecting rows copied every row's KV to fresh memory)."""
            n = self.get_seq_length()
            for buffer in self._buffers:
                for a, b in moves:
                    buffer[b, :, :n] = buffer[a, :, :n]
            self._buffers = tuple(buffer[:rows] for buffer in self._buffers)
            self.keys, self.values = (buffer[:, :, :n] for buffer in self._buffers)

    return GrowingLayer


def _seeded_cache(model, kv: list | None, batch: int, static_len: int | None, room: int = 0):
    """A cache holding ``kv`` (batch 1) for each of ``batch`` rows; static when ``static_len`` is set,
    else dynamic with ``room`` positions reserved for what the call adds (``_growing_layer``)."""
    from transformers import DynamicCache, StaticCache
    from transformers.cache_utils import DynamicLayer

    cache = (StaticCache(config=model.config, max_cache_len=static_len) if static_len
             else DynamicCache(config=model.config))
    if room and not static_len:
        cache.layers = [_growing_layer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if kv:
        for layer, (k, v) in enumerate(kv):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), layer)
    return cache


def _layer_kv(cache, length: int) -> list:
    """The first ``length`` positions of every layer of a batch-1 cache."""
    return [(layer.keys[:1, :, :length], layer.values[:1, :, :length]) for layer in cache.layers]


def _prefill_prefix(model, ids: torch.Tensor, start: int, kv: list | None) -> list:
    """KV of ``ids`` (batch 1) given the KV of ``ids[:start]``: runs only the tokens after ``start``."""
    cache = _seeded_cache(model, kv, 1, None)
    part = ids[start:].unsqueeze(0)
    positions = torch.arange(start, len(ids), device=ids.device).unsqueeze(0)
    decoder = model_parts(model)[0]  # the KV is all we want: no logits
    decoder(input_ids=part, attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=ids.device),
            position_ids=positions, past_key_values=cache, use_cache=True)
    return _layer_kv(cache, len(ids))


def _seed_rows(kvs: list, starts: list[int], width: int) -> list:
    """Per layer (keys, values) [rows, heads, width, dim]: each row's prefix KV right-aligned (the
    positions before it are pads, hidden by the mask: ``_seed_into``). Rows sharing one prefix share
    its KV object."""
    if len({id(kv) for kv in kvs}) == 1 and len(set(starts)) == 1:  # one group: a view, no copy
        return [(k.expand(len(kvs), -1, -1, -1), v.expand(len(kvs), -1, -1, -1)) for k, v in kvs[0]]
    out = [tuple(t.new_empty((len(kvs), t.shape[1], width, t.shape[3])) for t in pair)
           for pair in next(kv for kv in kvs if kv)]
    _seed_into(out, kvs, starts, width)
    return out


def _seed_into(views: list, kvs: list, starts: list[int], prefix: int) -> None:
    """Each row's prefix KV written right-aligned into the first ``prefix`` positions of ``views`` (per
    layer (keys, values) [rows, heads, >= prefix, dim]), the positions before it zeroed: pads, hidden
    by the mask, but a NaN left there by the memory's last use would still reach the attention's sum.
    Each run of neighbouring rows with one prefix KV is one sliced write per layer, so callers put a
    group's rows side by side (a write per row, or through an index, cost 50-100 ms a call on 2 cores)."""
    if not prefix:
        return
    first = 0
    for end in range(1, len(kvs) + 1):
        if end < len(kvs) and kvs[end] is kvs[first] and starts[end] == starts[first]:
            continue
        rows, kv, start = slice(first, end), kvs[first], starts[first]
        for layer, pair in enumerate(views):
            for which, view in enumerate(pair):
                if start < prefix:
                    view[rows, :, :prefix - start] = 0
                if start:
                    view[rows, :, prefix - start:prefix] = kv[layer][which][:, :, :start]
        first = end


def _prefill_suffixes(model, rows: list[torch.Tensor], starts: list[int], cache, pad_id: int,
                      static_len: int | None = None) -> _Batch:
    """Every row's tokens after its prefix (``starts[i]`` tokens, whose KV ``cache`` holds right-aligned
    to the longest prefix) in one batch: the suffixes left-padded after it; the batch holds each row's
    first new token. A static cache gets a mask as wide as itself (one decode shape throughout)."""
    device = rows[0].device
    prefix = max(starts)
    width = max(len(r) - s for r, s in zip(rows, starts))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), static_len or prefix + width, dtype=torch.long, device=device)
    for i, (row, start) in enumerate(zip(rows, starts)):
        n = len(row) - start
        ids[i, width - n:] = row[start:]
        mask[i, prefix - start:prefix] = 1
        mask[i, prefix + width - n:prefix + width] = 1
    positions = (mask.cumsum(1) - 1)[:, prefix:prefix + width].clamp(min=0)  # pads: any position, none is seen
    logits = _forward(model, ids, mask, positions, cache)
    return _Batch(cache, mask, prefix + width, list(range(len(rows))), logits.argmax(-1))


def _prefill_in_buckets(model, rows: list[torch.Tensor], starts: list[int], kvs: list, buckets: list[list[int]],
                        new_tokens: int, pad_id: int, take=fresh) -> _Batch:
    """Eager prefill, bucket by bucket, into the call's one KV allocation (from ``take``, ``_call_kv``):
    each bucket's rows a slice of it, their tokens right-aligned to the widest bucket, so the decode
    batch is the allocation as it stands (no merge: copying every bucket's KV into a merged cache,
    twice, was ~0.25 s of a request's 0.9 s prefill on 2 cores), with room for ``new_tokens`` steps."""
    lengths = [max(starts[i] for i in b) + max(len(rows[i]) - starts[i] for i in b) for b in buckets]
    width = max(lengths)
    kv = _call_kv(model, len(rows), width + new_tokens, rows[0].device, take)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
    parts, at = [], 0
    for bucket, length in zip(buckets, lengths):
        bucket = sorted(bucket, key=lambda i: (id(kvs[i]), starts[i]))  # each group's rows neighbours
        mine, at = slice(at, at + len(bucket)), at + len(bucket)
        for pair in kv:
            for buffer in pair:
                buffer[mine, :, :width - length] = 0  # the pads before this bucket's tokens
        views = [(k[mine, :, width - length:], v[mine, :, width - length:]) for k, v in kv]
        prefix = max(starts[i] for i in bucket)
        _seed_into(views, [kvs[i] for i in bucket], [starts[i] for i in bucket], prefix)
        cache = _cache_of(model, [_adopted_layer(k, v, prefix) for k, v in views])
        part = _prefill_suffixes(model, [rows[i] for i in bucket], [starts[i] for i in bucket], cache, pad_id)
        mask[mine, width - part.length:] = part.mask
        parts.append((bucket, part))
    order = [i for bucket, _ in parts for i in bucket]
    next_ids = torch.cat([batch.next_ids for _, batch in parts])
    # steps that check drafts (``lookup``) leave the positions of refused ones behind: a call that runs
    # out of the allocation moves once to new memory with room for ``new_tokens`` more
    layers = [_adopted_layer(k, v, width, room=new_tokens) for k, v in kv]
    return _Batch(_cache_of(model, layers), mask, width, order, next_ids)


def _call_kv(model, rows: int, width: int, device, take=fresh) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A call's KV, allocated once: per layer (keys, values) [rows, KV heads, width, head dim], unset;
    from ``take`` (``KVPool.take``: memory kept from the last call; ``fresh``: new memory)."""
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shape, count = (rows, heads, width, dim), 2 * cfg.num_hidden_layers
    tensors = take(count, shape, _model_dtype(model), device)
    return list(zip(tensors[0::2], tensors[1::2]))


def _model_dtype(model) -> torch.dtype:
    """The dtype the model computes in (its embedding weight's; its KV is kept in it)."""
    return model_parts(model)[0].get_input_embeddings().weight.dtype


def _adopted_layer(keys: torch.Tensor, values: torch.Tensor, length: int, room: int = 0):
    """A ``_growing_layer`` over given buffers (views of a call's one KV allocation) that already hold
    ``length`` tokens: what the model adds is written there, in place (past their end, in new memory
    with ``room`` positions to spare)."""
    layer = _growing_layer(room)
    layer.lazy_initialization(keys, values)
    layer._buffers = (keys, values)
    layer.keys, layer.values = keys[:, :, :length], values[:, :, :length]
    return layer


def _cache_of(model, layers: list):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    cache.layers = layers
    return cache


def _plain_layers(model) -> bool:
    """Whether the model's dynamic cache is plain ``DynamicLayer``s (every LLaMA-family model): only
    then does the eager prefill lay the call's KV out itself (``_prefill_in_buckets``)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def _buckets(suffixes: list[int], forward_cost: int) -> list[list[int]]:
    """The rows split into prefill batches: sorted by suffix length, cut where the padding a cut saves
    is worth more than ``forward_cost`` positions (the cheapest cuts, by dynamic programming over the
    sorted rows; a batch costs its rows times its longest suffix, plus ``forward_cost``)."""
    order = sorted(range(len(suffixes)), key=lambda i: suffixes[i])
    best, cut = [0] + [None] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for begin in range(end):
            cost = best[begin] + (end - begin) * suffixes[order[end - 1]] + forward_cost
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, begin
    buckets, end = [], len(order)
    while end:
        buckets.append(order[cut[end]:end])
        end = cut[end]
    return buckets[::-1]


@dataclass(frozen=True)
class RowStop:
    """When one row is done: after ``max_new_tokens`` new tokens, at EOS, at a stop string in its new
    text, or when ``stop_when(new_text)`` is true. Rows of one call may each have their own."""
    max_new_tokens: int
    stop_strings: tuple[str, ...] | None = None
    stop_when: Callable[[str], bool] | None = None


class _Stopper:
    """Decides, after each token, whether a row is done (its ``RowStop``)."""

    def __init__(self, tokenizer, eos: set[int], stop: RowStop):
        self.tokenizer, self.eos, self.max_new_tokens = tokenizer, eos, stop.max_new_tokens
        self.stop_strings = [s for s in (stop.stop_strings or []) if s]
        self.stop_when = stop.stop_when

    def done(self, new: list[int]) -> bool:
        if len(new) >= self.max_new_tokens or new[-1] in self.eos:
            return True
        if not self.stop_strings and self.stop_when is None:
            return False
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if any(s in text for s in self.stop_strings):
            return True
        return self.stop_when is not None and bool(self.stop_when(text))


def _keep_rows(batch: _Batch, keep: list[int], static: bool) -> None:
    """Drop finished rows from an eager batch (a static one keeps its shape; their tokens are ignored).
    The rows that stay are packed at the front without moving most of them: each gap a finished row
    leaves below ``len(keep)`` takes a running row from above, so only the rows that move are copied."""
    if static or len(keep) == len(batch.rows):
        return
    kept = set(keep)
    moves = list(zip([i for i in keep if i >= len(keep)], [i for i in range(len(keep)) if i not in kept]))
    order = list(range(len(keep)))
    for a, b in moves:
        order[b] = a
    index = torch.tensor(order, device=batch.mask.device)
    grow = _growing_layer_class()
    for layer in batch.cache.layers:
        if type(layer) is grow and layer._buffers is not None:
            layer.keep_first(len(keep), moves)
        else:
            layer.batch_select_indices(index)
    batch.mask, batch.next_ids = batch.mask[index], batch.next_ids[index]
    batch.rows = [batch.rows[i] for i in order]


def _take_tokens(rows: list[int], written: list[list[int]], out: list[list[int]], running: set[int],
                 stoppers: list[_Stopper], on_row) -> list[int]:
    """Each running batch row's tokens of the last step added to its answer, one at a time up to its
    stop (the tokens a checked step wrote past it are dropped); a row that stops leaves ``running`` and
    goes to ``on_row``. Returns the batch rows still running."""
    keep = []
    for i, (row, tokens) in enumerate(zip(rows, written)):
        if row not in running:
            continue
        for token in tokens:
            out[row].append(token)
            if stoppers[row].done(out[row]):
                running.discard(row)
                if on_row is not None:
                    on_row(row, out[row])
                break
        else:
            keep.append(i)
    return keep


def _one_token_step(model, batch: _Batch, step, static: bool) -> None:
    """Every running row's last token through ``step``; its next token becomes ``batch.next_ids``."""
    if static:
        batch.mask[:, batch.length] = 1
    else:
        ones = torch.ones(len(batch.rows), 1, dtype=batch.mask.dtype, device=batch.mask.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
    batch.length += 1
    positions = batch.mask.sum(1, keepdim=True) - 1
    logits = step(model, batch.next_ids.unsqueeze(1), batch.mask, positions, batch.cache)
    batch.next_ids = logits.argmax(-1)


class Decoder:
    """Greedy decoding with prefix reuse for one served model (``LLMService.decoder``)."""

    def __init__(self, backend: str = "auto", cache_entries: int = 32, cache_tokens: int = 4096,
                 min_prefix_tokens: int = 16, kv_pool_bytes: int = 0, lookup: Lookup = Lookup()):
        select_backend(backend, torch.device("cpu"))  # a bad name fails at start, not on the first request
        self.backend, self.lookup = backend, lookup  # lookup: drafts in eager decode steps (none by default)
        self.cache = PrefixCache(cache_entries, cache_tokens, min_prefix_tokens)
        self.kv_pool = KVPool(kv_pool_bytes)  # the eager CPU call's KV memory, kept between calls
        self.stats = DecodeStats()
        self._compiled: dict = {}  # id(model) -> compiled decode step (graphs backend)

    @classmethod
    def from_config(cls, cfg) -> "Decoder":
        return cls(cfg.decode_backend, cfg.prefix_cache_entries, cfg.prefix_cache_tokens, cfg.prefix_min_tokens,
                   cfg.kv_pool_mb << 20, Lookup(cfg.lookup_tokens, cfg.lookup_ngram, cfg.lookup_positions))

    def forget_adapters(self, alive) -> int:
        """Drop cached KV of adapters no longer loaded under these peft names (after unload/re-register)."""
        alive = set(alive)
        return self.cache.retain(lambda scope: scope[1] is None or set(scope[1]) <= alive)

    def generate(self, llm, rows: list[list[int]], max_new_tokens: int | None = None, stop_strings=None,
                 stop_when: Callable[[str], bool] | None = None, *, stops: list[RowStop] | None = None,
                 on_row: Callable[[int, list[int]], None] | None = None) -> list[list[int]]:
        """The new token ids of each row (greedy), each ending at its first stop (included).

        The stop settings apply to every row, or ``stops`` gives each row its own (a call may then
        mix the profile's keyword line with ten explanation sentences). ``on_row(row, tokens)`` is
        called as each row finishes (in this thread, between decode steps: keep it quick)."""
        if stops is None:
            if max_new_tokens is None:
                raise TypeError("generate needs max_new_tokens or one RowStop per row")
            stops = [RowStop(int(max_new_tokens), tuple(stop_strings) if stop_strings else None, stop_when)] * len(rows)
        if len(stops) != len(rows):
            raise ValueError(f"{len(stops)} stop settings for {len(rows)} rows")
        if not rows or all(s.max_new_tokens < 1 for s in stops):
            for row in range(len(rows)):
                if on_row is not None:
                    on_row(row, [])
            return [[] for _ in rows]
        if any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        model, device = llm.model, llm.device
        backend = select_backend(self.backend, device)
        ids = [torch.tensor(r, dtype=torch.long) for r in rows]
        eos = _eos_ids(model)
        stoppers = [_Stopper(llm.tokenizer, eos, stop) for stop in stops]
        with torch.inference_mode(), self.kv_pool.borrow() as take:
            batch = self._prefill(model, ids, device, backend, max(s.max_new_tokens for s in stops), take)
            # drafts only where a checked step writes what single steps write: in bfloat16 the rounding of
            # a several-token forward differs enough to change 5 of 40 replayed sentences (float32: 0 of 240)
            exact = _model_dtype(model) == torch.float32
            out = self._decode(model, batch, stoppers, backend, on_row, [list(r) for r in rows] if exact else None)
        self.stats.calls += 1
        self.stats.rows += len(rows)
        self.stats.new_tokens += sum(len(o) for o in out)
        return out

    def _prefill(self, model, ids: list[torch.Tensor], device, backend: str, max_new_tokens: int, take=fresh):
        """Per group of rows: cached prefix -> shared prefix (batch 1); then every row's suffix (batch n)."""
        scope = (id(model), adapter_key(model))
        single = len(ids) == 1
        starts, kvs = [0] * len(ids), [None] * len(ids)
        for members, shared in ([([0], 0)] if single else prefix_groups(ids, self.cache.min_tokens)):
            rep = ids[members[0]]
            # ``shared`` < every member's length: each row keeps a token to predict from
            cached, kv = self.cache.longest(scope, rep, len(rep) - 1 if single else shared)
            start = cached
            if not single and shared - cached >= self.cache.min_tokens:  # the group's start, once at batch 1
                kv = _prefill_prefix(model, rep[:shared].to(device), cached, _to(kv, device))
                self.cache.remember(scope, rep[:shared], kv)
                self.stats.prefill_tokens += shared - cached
                start = shared
            kv = _to(kv, device)
            for row in members:
                starts[row], kvs[row] = start, kv
            self.stats.cached_tokens += cached * len(members)
            self.stats.shared_tokens += (start - cached) * (len(members) - 1)
        suffixes = [len(r) - s for r, s in zip(ids, starts)]
        rows_on_device = [r.to(device) for r in ids]
        if backend == "eager" and _plain_layers(model):
            # rows of very different suffix lengths (an explanation's ~80 tokens, the profile's ~15)
            # prefill in separate batches, each into its slice of the call's KV
            buckets = _buckets(suffixes, FORWARD_COST_POSITIONS)
            batch = _prefill_in_buckets(model, rows_on_device, starts, kvs, buckets, max_new_tokens, _pad_id(model),
                                        take)
        else:  # one batch (static caches keep one shape)
            buckets = [list(range(len(ids)))]
            # the KV is as wide as the longest prefix plus the longest suffix, which rows of different
            # groups can make wider than any one prompt
            width = max(starts) + max(suffixes)
            static_len = None if backend == "eager" else -(-(width + max_new_tokens) // STATIC_BUCKET) * STATIC_BUCKET
            prefix = max(starts)
            cache = _seeded_cache(model, _seed_rows(kvs, starts, prefix) if prefix else None, len(ids), static_len,
                                  room=width + max_new_tokens)
            batch = _prefill_suffixes(model, rows_on_device, starts, cache, _pad_id(model), static_len)
        if single:  # the whole prompt's KV, for the next call that starts the same way
            self.cache.remember(scope, ids[0], _layer_kv(batch.cache, len(ids[0])))
        self.stats.prompt_tokens += sum(len(r) for r in ids)
        self.stats.prefill_tokens += sum(len(rows) * max(suffixes[i] for i in rows) for rows in buckets)
        return batch

    def _decode(self, model, batch: _Batch, stoppers: list[_Stopper], backend: str, on_row=None,
                prompts: list[list[int]] | None = None) -> list[list[int]]:
        """Steps until every row is done; each done row goes to ``on_row``. A step feeds each running row
        the token it wrote last; in the eager backend, while the step stays small (``self.lookup``), also
        the tokens that followed the same words before in the row's prompt or answer (``lookup.draft``):
        the model keeps those it would have written, so a row may gain several tokens in one step."""
        out: list[list[int]] = [[] for _ in stoppers]
        running = {row for row, stopper in enumerate(stoppers) if stopper.max_new_tokens >= 1}
        for row in sorted(set(range(len(stoppers))) - running):  # a budget of 0: done before it starts
            if on_row is not None:
                on_row(row, [])
        static = backend != "eager"
        step = self._step_function(model, backend)
        written = [[token] for token in batch.next_ids.tolist()]  # each batch row's tokens of the last step
        while True:
            keep = _take_tokens(batch.rows, written, out, running, stoppers, on_row)
            if not running:
                return out
            _keep_rows(batch, keep, static)
            drafts = [] if static or prompts is None else self._drafts(batch.rows, prompts, out, stoppers)
            if any(drafts):
                written = self._checked_step(model, batch, drafts)
            else:
                _one_token_step(model, batch, step, static)
                written = [[token] for token in batch.next_ids.tolist()]
            self.stats.decode_steps += 1
            self.stats.decode_rows += len(batch.rows)

    def _drafts(self, rows: list[int], prompts: list[list[int]], out: list[list[int]],
                stoppers: list[_Stopper]) -> list[list[int]]:
        """Each running row's draft (``lookup.draft`` over its prompt and answer so far), as long as the
        step's size allows and never past the row's token budget (the step writes one token more)."""
        k = self.lookup.length(len(rows))
        if not k:
            return []
        return [draft(prompts[row] + out[row], self.lookup.ngram,
                      min(k, stoppers[row].max_new_tokens - len(out[row]) - 1)) for row in rows]

    def _checked_step(self, model, batch: _Batch, drafts: list[list[int]]) -> list[list[int]]:
        """One forward of every row's last token and its draft (pads after a shorter draft): each row
        writes the model's tokens up to and including its first disagreement with the draft. The
        positions of the refused drafts and the pads stay in the KV, masked out for good."""
        rows, width, length = len(batch.rows), 1 + max(len(d) for d in drafts), batch.length
        device = batch.mask.device
        ids = torch.full((rows, width), _pad_id(model), dtype=torch.long)
        fed = torch.zeros(rows, width, dtype=batch.mask.dtype)
        for i, (last, drafted) in enumerate(zip(batch.next_ids.tolist(), drafts)):
            ids[i, :1 + len(drafted)] = torch.tensor([last, *drafted])
            fed[i, :1 + len(drafted)] = 1
        batch.mask = torch.cat([batch.mask, fed.to(device)], dim=1)
        batch.length += width
        positions = (batch.mask.cumsum(1) - 1)[:, length:].clamp(min=0)  # pads: any position, none is seen
        predicted = _forward(model, ids.to(device), batch.mask, positions, batch.cache, every=True).argmax(-1)
        written = []
        for i, (drafted, tokens) in enumerate(zip(drafts, predicted.tolist())):
            kept = accepted(drafted, tokens)
            written.append(tokens[:kept + 1])
            batch.mask[i, length + 1 + kept:] = 0
            self.stats.drafted_tokens += len(drafted)
            self.stats.accepted_tokens += kept
        batch.next_ids = torch.tensor([w[-1] for w in written], device=device)
        return written

    def _step_function(self, model, backend: str):
        """The decode step: eager/static call the model; graphs a compiled, graph-captured forward
        (compiled once per model; new shapes recompile, which the static cache's buckets keep rare)."""
        if backend != "graphs":
            return _forward
        key = id(model)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(_forward, mode="reduce-overhead", fullgraph=False)
        return self._compiled[key]


def prefix_groups(ids: list[torch.Tensor], min_tokens: int) -> list[tuple[list[int], int]]:
    """The rows as groups that share a prefix: (row indices, the group's common start, leaving each row
    a token of its own). Rows sorted by their tokens (rows alike are neighbours), then neighbouring
    groups merged while that saves prefill: a group costs its prefix once plus each row's rest, and
    merging shortens the prefix to what both share (one user's explanation prompts stay one group
    around their shared history; a merged profile prompt does not shorten it)."""
    order = sorted(range(len(ids)), key=lambda i: ids[i].tolist())
    groups = [([i], len(ids[i]) - 1) for i in order]
    lengths = [len(r) for r in ids]

    def cost(members, shared):
        return shared + sum(lengths[m] - shared for m in members)

    while len(groups) > 1:
        best, gain = None, 0
        for j in range(len(groups) - 1):
            (a, sa), (b, sb) = groups[j], groups[j + 1]
            shared = min(sa, sb, common_length(ids[a[-1]], ids[b[0]]))
            saved = cost(a, sa) + cost(b, sb) - cost(a + b, shared)
            if shared >= min_tokens and saved > gain:
                best, gain = (j, shared), saved
        if best is None:
            break
        j, shared = best
        groups[j:j + 2] = [(groups[j][0] + groups[j + 1][0], shared)]
    return [(sorted(members), shared if len(members) > 1 else lengths[members[0]] - 1) for members, shared in groups]


def _to(kv: list | None, device) -> list | None:
    return None if kv is None else [(k.to(device), v.to(device)) for k, v in kv]


def _eos_ids(model) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    return set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())


def _pad_id(model) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return int(pad) if pad is not None else 0
