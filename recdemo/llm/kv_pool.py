"""Memory for the decoder's KV, kept from one call to the next on a CPU.

Why: on this project's 2-core VM the first write to a fresh 4 KB page costs a page fault (~15 us: the
kernel zeroes the page). A four-user decoder call lays out ~300 MB of KV; allocated afresh each
call, its faults were ~13% of the call's CPU time (``perf``: ``clear_page_erms``). Kept, the pages
are faulted in once. CUDA has its own caching allocator, so the pool serves CPU calls only; a call
needing more than ``max_bytes`` gets fresh memory that is not kept (a 7B model's KV would be GBs).

One call holds the memory at a time (``borrow``); a call that finds it lent gets fresh memory, so
two decoders' calls never share a buffer. Whatever the memory held before is left there: the
decoder overwrites or zeroes every position it reads.
"""
from __future__ import annotations

import contextlib
import math
import threading

import torch


class KVPool:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._flat: torch.Tensor | None = None  # the kept memory, 1-D
        self._lock = threading.Lock()
        self._lent = False

    @contextlib.contextmanager
    def borrow(self):
        """``take`` for the length of one call, or ``fresh`` when another call holds the memory."""
        with self._lock:
            mine, self._lent = not self._lent, True
        try:
            yield self.take if mine else fresh
        finally:
            if mine:
                with self._lock:
                    self._lent = False

    def take(self, count: int, shape: tuple, dtype: torch.dtype, device) -> list[torch.Tensor]:
        """``count`` tensors of ``shape``, unset: carved from the kept memory when they fit ``max_bytes``
        (fresh, not kept, otherwise)."""
        numel = math.prod(shape)
        if torch.device(device).type != "cpu" or count * numel * dtype.itemsize > self.max_bytes:
            return fresh(count, shape, dtype, device)
        if self._flat is None or self._flat.dtype != dtype:
            # the whole budget at once: the kernel backs a page only when it is first written, so this
            # costs what the largest call so far used, and never a second mapping as calls grow
            self._flat = torch.empty(self.max_bytes // dtype.itemsize, dtype=dtype)
        return [self._flat[i * numel:(i + 1) * numel].view(shape) for i in range(count)]


def fresh(count: int, shape: tuple, dtype: torch.dtype, device) -> list[torch.Tensor]:
    """``count`` new tensors of ``shape``, unset (``KVPool.take``'s signature, nothing kept)."""
    return [torch.empty(shape, dtype=dtype, device=device) for _ in range(count)]
