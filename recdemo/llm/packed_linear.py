"""Small-batch float32 linear layers on a CPU through oneDNN, each weight packed once.

A decode step multiplies a few rows (one per running row) by every weight. On a CPU without bf16
arithmetic (AVX2 only, most laptops; the model then runs in float32, ``models.pick_dtype``) MKL's
GEMM is slow at such shapes: 2 cores of an AMD EPYC (Zen 3) took 0.55 ms for 20 rows x SmolLM2's
576 -> 1536 projection and 28.6 ms for its 49k-word output projection; oneDNN with the weight laid
out for it ahead of time took 0.32 and 12.9 ms. At a few hundred rows (a prefill) MKL is as fast or
faster, so the packed weight serves forwards of at most ``max_rows`` rows (``LLMConfig.cpu_packed_rows``)
and MKL the rest. A decode step of 12 rows went from 98 to 76 ms, of 5 rows from 91 to 60 ms
(docs/notes/app.md has the measurements and their commands).

The packed copy is as large as the weight, so a model is packed only when its linear weights fit
``max_mb`` (``LLMConfig.cpu_packed_max_mb``); the weight itself stays, for training (a forward with
gradients, a LoRA fine-tune on the served model, runs the plain layer) and for anyone who reads it.
A weight changed in place is packed again before its next packed forward.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class PackedLinear(torch.nn.Linear):
    """An ``nn.Linear`` (peft and the rest still see one) whose small inference forwards use a packed
    copy of its weight. Made by ``pack_linears`` from a model's own layers (same parameters)."""

    max_rows: int = 0
    _packed: torch.Tensor | None = None
    _packed_version: int = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.numel() <= self.max_rows * self.in_features and not torch.is_grad_enabled()
                and x.dtype == torch.float32 and x.device.type == "cpu" and self.weight.dtype == torch.float32):
            if self._packed_version != self.weight._version:  # changed in place since it was packed
                self._pack()
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def __deepcopy__(self, memo) -> torch.nn.Linear:
        """A plain ``nn.Linear`` with copies of the parameters: a copy of the served model is made to
        train on (``finetune/shared_base.OwnBase``), and oneDNN's packed tensor cannot be copied."""
        clone = torch.nn.Linear.__new__(torch.nn.Linear)
        memo[id(self)] = clone
        skip = {"_packed", "_packed_version", "max_rows"}
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k not in skip})
        return clone

    def _pack(self) -> None:
        with torch.no_grad():
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), self.max_rows)
        self._packed_version = self.weight._version


def packing_available() -> bool:
    """Whether this torch can pack a weight for oneDNN (a private op: checked, never assumed)."""
    try:
        probe = torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 2), 1)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), probe, None, "none", [], "")
        return torch.backends.mkldnn.is_available() and bool(torch.equal(out, torch.full((1, 2), 2.0)))
    except (RuntimeError, AttributeError):
        return False


def pack_linears(model: torch.nn.Module, max_rows: int, max_mb: int) -> int:
    """Turn every float32 CPU ``nn.Linear`` of ``model`` into a ``PackedLinear`` serving forwards of at
    most ``max_rows`` rows; returns how many. Nothing is packed when ``max_rows`` is 0, when the packed
    copies would exceed ``max_mb``, or when this torch cannot pack."""
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear
              and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"]
    size_mb = sum(m.weight.numel() * m.weight.element_size() for m in layers) / 2 ** 20
    if max_rows <= 0 or not layers or size_mb > max_mb or not packing_available():
        return 0
    for layer in layers:
        layer.__class__ = PackedLinear  # the same module and parameters, another forward
        layer.max_rows = int(max_rows)
        layer._pack()
    log.info("packed %d linear layers (%.0f MB) for forwards of up to %d rows", len(layers), size_mb, max_rows)
    return len(layers)
