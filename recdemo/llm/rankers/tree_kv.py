"""Where ``TreeDecoder`` keeps the prompt's and the nodes' KV, and how it runs a packed call.

``eager`` grows a DynamicCache: every call has its own shapes (the CPU default). ``static``
preallocates the KV (a StaticCache of ``capacity`` positions, sized in buckets of
``CAPACITY_BUCKET``) and pads every packed call to a width bucket (1, 2, 4, ... 64, then multiples
of 64), so calls repeat a few shapes. Padding nodes sit after the real ones: they see the prompt only
(never an all-masked row), no real node sees them, and the next call overwrites their slots (the
write position is rewound to the real length after each call). ``graphs`` is ``static`` with the
packed call under ``torch.compile(mode="reduce-overhead")``: CUDA graphs replay a call's ~30
kernels per layer with one launch (a 7B model at batch 1 is bound by launches, not by the chip).
Each (width, capacity) bucket is compiled and captured once per model, on its first call (a warm-up
cost; up to ``GRAPH_SHAPES`` of them, beyond that a shape runs uncompiled). Static caches are pooled
per model (``_CachePool``, a few idle ones): a new decoder takes a dropped one's buffers, so their
addresses stay fixed and captured graphs replay instead of re-recording (a graph re-records when a
static buffer moves, and gives up after a limit). The prompt's own forward stays eager in every
backend: it initialises the static buffers (their addresses must be fixed before any capture) and a
long prompt is compute-bound anyway.

The backend is chosen like the generation decoder's (``llm/decode.select_backend``: ``auto`` is
graphs on CUDA, eager elsewhere; graphs without CUDA run as static). All give the same
log-probabilities up to float rounding (tests/llm/rankers/test_tree_kv.py).
"""
from __future__ import annotations

import threading
import weakref

import torch

from recdemo.llm.decode import select_backend

CAPACITY_BUCKET = 256  # static KV length steps: few distinct shapes to capture across prompts
DEFAULT_RESERVE = 128  # nodes a static cache holds beyond the prompt when the caller gives no estimate
WIDTH_BUCKET = 64  # packed calls wider than this are padded to a multiple of it (narrower: a power of two)
GRAPH_SHAPES = 64  # compiled (width, capacity) buckets per model (torch's default recompile limit is 8)
POOLED_CACHES = 4  # idle static caches kept per model for the next decoders (a 7B's at 1,536 positions: 0.8 GB)


def width_bucket(n: int) -> int:
    """The padded width of a packed call of ``n`` nodes."""
    if n <= WIDTH_BUCKET:
        return 1 << max(n - 1, 0).bit_length()
    return -(-n // WIDTH_BUCKET) * WIDTH_BUCKET


def capacity_bucket(n: int) -> int:
    return -(-n // CAPACITY_BUCKET) * CAPACITY_BUCKET


def make_kv(decoder, device, backend: str = "eager", reserve: int = 0):
    """The KV store for ``backend`` (auto/eager/static/graphs); ``reserve``: nodes a static cache
    should hold without growing (a guess is fine: it grows by copying when exceeded)."""
    chosen = select_backend(backend, device)
    if chosen == "eager":
        return EagerKV(decoder, device)
    return StaticKV(decoder, device, reserve, graphs=chosen == "graphs")


def to_device(values, device, dtype=torch.long) -> torch.Tensor:
    """A host list or tensor on ``device`` without waiting for the work queued there (a plain copy
    to a GPU waits for the stream: a host -> device copy must not cost a sync)."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    return t.to(device, non_blocking=True)


def _mask(rows: int, width: int, n_prompt: int, anc_rows, anc_cols, dtype) -> torch.Tensor:
    """[1, 1, rows, width] additive mask: every row sees the prompt and the node columns
    ``anc_cols`` (absolute KV positions) on ``anc_rows``; everything else is hidden."""
    mask = torch.full((rows, width), torch.finfo(dtype).min, dtype=dtype)
    mask[:, :n_prompt] = 0.0
    if len(anc_rows):
        mask[torch.as_tensor(anc_rows), torch.as_tensor(anc_cols)] = 0.0
    return mask[None, None]


class EagerKV:
    """A DynamicCache grown by every call; each call runs exactly its own nodes."""
    backend = "eager"

    def __init__(self, decoder, device):
        self.decoder, self.device = decoder, device
        self.cache = None
        self.length = 0  # KV positions filled (prompt + nodes)
        self.n_prompt = 0

    def prefill(self, prompt: list[int]) -> torch.Tensor:
        """Runs the prompt; returns its last hidden states [len(prompt), d]."""
        out = self.decoder(input_ids=torch.tensor([prompt], device=self.device), use_cache=True)
        self.cache, self.length, self.n_prompt = out.past_key_values, len(prompt), len(prompt)
        return out.last_hidden_state[0]

    def extend(self, tokens: list[int], positions: list[int], anc_rows, anc_cols, dtype) -> torch.Tensor:
        """Runs ``tokens`` (KV positions ``length``...) with the ancestors given as (row, KV column)
        pairs; returns their last hidden states [len(tokens), d]."""
        n = len(tokens)
        mask = _mask(n, self.length + n, self.n_prompt, anc_rows, anc_cols, dtype)
        out = self.decoder(input_ids=to_device([tokens], self.device), attention_mask=to_device(mask, self.device),
                           position_ids=to_device([positions], self.device), past_key_values=self.cache,
                           use_cache=True)
        self.cache = out.past_key_values
        self.length += n
        return out.last_hidden_state[0]

    def rewind(self, length: int) -> None:
        """Forget every KV position from ``length`` on."""
        if length < self.length:
            self.cache.crop(length - self.length)  # a negative count: drop that many from the end
        self.length = length


class StaticKV(EagerKV):
    """A preallocated KV; packed calls padded to width buckets (captured as CUDA graphs with ``graphs``)."""

    def __init__(self, decoder, device, reserve: int = 0, graphs: bool = False):
        super().__init__(decoder, device)
        self.backend = "graphs" if graphs else "static"
        self.reserve = int(reserve) if reserve > 0 else DEFAULT_RESERVE
        self.capacity = 0
        self._finalizer = None
        self._step = _compiled_step() if graphs else _step

    def _new_cache(self, capacity: int):
        """A cache of ``capacity`` positions from the pool (its buffers keep their addresses, so captured
        graphs replay instead of re-recording), handed back when this store is dropped or grows."""
        self.capacity = capacity
        cache = _POOL.take(self.decoder, capacity, self.device)
        self._finalizer = weakref.finalize(self, _POOL.give, self.decoder, capacity, cache)
        return cache

    def prefill(self, prompt: list[int]) -> torch.Tensor:
        n = len(prompt)
        dtype = next(self.decoder.parameters()).dtype
        self.cache = self._new_cache(capacity_bucket(n + self.reserve))
        self._seek(0)  # a pooled cache: written from the start (what follows is masked until overwritten)
        low = torch.finfo(dtype).min
        mask = torch.full((n, self.capacity), low, dtype=dtype)
        mask[:, :n] = torch.triu(torch.full((n, n), low, dtype=dtype), diagonal=1)
        out = self.decoder(input_ids=torch.tensor([prompt], device=self.device),
                           attention_mask=mask[None, None].to(self.device),
                           position_ids=torch.arange(n, device=self.device)[None], past_key_values=self.cache,
                           use_cache=True)
        self.length = self.n_prompt = n
        return out.last_hidden_state[0]

    def _ensure_capacity(self, need: int) -> None:
        """Grow the cache (a copy into a larger one) when a call would run past its end."""
        if need <= self.capacity:
            return
        old = self.cache
        self._finalizer.detach()  # the old cache goes back to the pool after the copy, not before
        self.cache = self._new_cache(capacity_bucket(need + self.reserve))
        self._seek(0)
        for i, layer in enumerate(old.layers):
            self.cache.update(layer.keys[:, :, :self.length], layer.values[:, :, :self.length], i)
        _POOL.give(self.decoder, old.layers[0].max_cache_len, old)

    def extend(self, tokens: list[int], positions: list[int], anc_rows, anc_cols, dtype) -> torch.Tensor:
        n = len(tokens)
        width = width_bucket(n)
        self._ensure_capacity(self.length + width)
        pad = width - n
        mask = _mask(width, self.capacity, self.n_prompt, anc_rows, anc_cols, dtype)
        ids = to_device([tokens + [tokens[-1]] * pad], self.device)
        pos = to_device([positions + [positions[-1]] * pad], self.device)
        self._seek(self.length)
        hidden = self._step(self.decoder, ids, to_device(mask, self.device), pos, self.cache)
        self.length += n
        self._seek(self.length)  # the padding's slots are free again: the next call writes over them
        return hidden[0, :n].clone()  # a captured graph's output buffer is reused by its next replay

    def _seek(self, length: int) -> None:
        """Set where the next call writes: each static layer's counter, in place (a fixed address)."""
        for layer in self.cache.layers:
            if layer.is_initialized:  # a fresh cache's first write sets it up at 0
                layer.cumulative_length.fill_(length)

    def rewind(self, length: int) -> None:
        self.length = min(length, self.length)
        self._seek(self.length)


class _CachePool:
    """Idle static caches per model (weakly keyed: they go with the model), at most ``POOLED_CACHES``
    each, the least recently returned dropped first. Thread-safe."""

    def __init__(self):
        self._idle: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # decoder -> [(capacity, cache)]
        self._lock = threading.Lock()

    def take(self, decoder, capacity: int, device):
        with self._lock:
            idle = self._idle.get(decoder, [])
            for i, (cap, cache) in enumerate(idle):
                layer = cache.layers[0]
                if cap == capacity and (not layer.is_initialized or _same_device(layer.device, device)):
                    return idle.pop(i)[1]
        from transformers import StaticCache

        return StaticCache(config=decoder.config, max_cache_len=capacity)

    def give(self, decoder, capacity: int, cache) -> None:
        with self._lock:
            idle = self._idle.setdefault(decoder, [])
            if not any(c is cache for _, c in idle):
                idle.append((capacity, cache))
            del idle[:-POOLED_CACHES]

    def idle(self, decoder) -> int:
        with self._lock:
            return len(self._idle.get(decoder, []))


_POOL = _CachePool()


def _same_device(a, b) -> bool:
    """``cuda`` and ``cuda:0`` are one device when either leaves the index out."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _step(decoder, ids, mask, positions, cache) -> torch.Tensor:
    return decoder(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True).last_hidden_state


_COMPILED = []  # the one compiled step (torch.compile keeps a graph per model and shape bucket)


def _compiled_step():
    """``_step`` compiled for CUDA graphs, one graph per shape bucket (``dynamic=False``: a captured
    graph has fixed shapes anyway), with room for ``GRAPH_SHAPES`` buckets."""
    if not _COMPILED:
        compiled = torch.compile(_step, mode="reduce-overhead", dynamic=False, fullgraph=False)

        def step(*args):
            with torch._dynamo.config.patch(recompile_limit=GRAPH_SHAPES):
                return compiled(*args)

        _COMPILED.append(step)
    return _COMPILED[0]
