"""``@gpu``: Hugging Face ZeroGPU's ``spaces.GPU`` when the ``spaces`` package is importable
(a GPU is attached for the duration of the call), otherwise a decorator that changes nothing."""
from __future__ import annotations

try:  # pragma: no cover - only on Hugging Face Spaces
    import spaces

    gpu = spaces.GPU(duration=60)
except ImportError:
    def gpu(fn):
        return fn
