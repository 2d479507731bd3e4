"""Prompt-lookup drafts for greedy decoding: a row's next tokens guessed by copying from its own text,
checked by the model in the same forward that writes its next token. Exact: the model keeps a drafted
token only where it would have written that token itself, so a row's answer is the one it writes one
token at a time, in fewer decode steps.

Why it pays here: an explanation sentence copies much of its prompt (the titles it cites, "users who
watched both", the genres the prompt lists): replaying 13 requests' explanation calls, drafting the 3
tokens that followed the row's last 3 tokens where they appeared before would have accepted 1,229 of
the 2,553 tokens written. On 2 CPU cores a decode step is bound by reading the weights (~45 ms for
SmolLM2-135M at one row, ~3 ms more a row) while each extra position it feeds costs ~2.5 ms a row, so
drafts go in only while a step stays small (``Lookup.length``): at the tail of a call, when few rows
still run, a step checks up to ``tokens`` drafts per row almost for free; a busy step of many rows feeds
none. Measured (docs/notes/app.md): decode steps of a request 279 -> 156 for 12 users, the same answers.

Exact in float32 only: the model's token at a drafted position comes from a forward of several tokens,
whose sums round differently from a one-token step's. In float32 that changed none of 240 replayed
sentences; in bfloat16 it changed 5 of 40, so the decoder drafts only for float32 models.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lookup:
    """How many tokens a row may draft (0: none), from a match of up to ``ngram`` of its last tokens,
    while a step feeds at most ``positions`` positions (rows x (1 + drafts))."""
    tokens: int = 0
    ngram: int = 3
    positions: int = 0

    def length(self, rows: int) -> int:
        """Drafts per row for a step of ``rows`` rows: as many as fit the positions, at most ``tokens``."""
        if self.tokens <= 0 or rows <= 0:
            return 0
        return max(0, min(self.tokens, self.positions // rows - 1))


def draft(context: list[int], ngram: int, k: int) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of the longest suffix of
    ``context`` (``ngram`` tokens down to one) that occurred before; [] when none did."""
    if k <= 0:
        return []
    for size in range(min(ngram, len(context) - 1), 0, -1):
        tail = context[-size:]
        first = tail[0]
        for start in range(len(context) - size - 1, -1, -1):  # the latest occurrence: the nearest context
            if context[start] == first and context[start:start + size] == tail:
                return context[start + size:start + size + k]
    return []


def accepted(drafted: list[int], predicted: list[int]) -> int:
    """How many drafted tokens the model agrees with: ``predicted[j]`` is its next token after the row's
    last token and the first ``j`` drafts, so draft ``j`` stands while it equals ``predicted[j]``."""
    n = 0
    while n < len(drafted) and drafted[n] == predicted[n]:
        n += 1
    return n
