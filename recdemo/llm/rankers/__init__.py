"""LLM rankers over SASRec's candidates: ``get_ranker(name, service, dataset, retriever)``.

``RANKERS`` is the one registry (name -> class); ``RANKER_LABELS`` gives each a one-line label for
the UI. The CLI's ``--ranker`` choices, the config check (``check_ranker``) and the app all read them.

Each ranker returns ``rank(req) -> list[RankedItem]`` (k distinct valid items, best first, fused with
SASRec by the weight chosen on validation) and ``prompt(req) -> str``.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

# name -> (module:class, one-line label). The classes are imported on first use: the CLI offers the
# names as --ranker choices without importing torch (~2.5 s), which `--help` should not wait for.
_ENTRIES = {
    "palr": ("recdemo.llm.rankers.palr:PALRRanker", "PALR (LLM picks from candidates)"),
    "score": ("recdemo.llm.rankers.score:ScoreRanker", "Score (LLM log-likelihood)"),
    "tallrec": ("recdemo.llm.rankers.tallrec:TALLRecRanker", "TALLRec (P(yes))"),
    "genrec": ("recdemo.llm.rankers.genrec:GenRecRanker", "GenRec (generate titles)"),
}
_BASE_NAMES = {"ACTIVE", "Ranker", "ScoredList", "finish"}  # re-exported from base, lazily too


class _Registry(Mapping):
    """name -> ranker class, importing a class's module only when the class is looked up."""

    def __getitem__(self, name: str) -> type:
        module, cls = _ENTRIES[name][0].split(":")
        return getattr(importlib.import_module(module), cls)

    def __iter__(self):
        return iter(_ENTRIES)

    def __len__(self) -> int:
        return len(_ENTRIES)


RANKERS: Mapping[str, type] = _Registry()
RANKER_LABELS: dict[str, str] = {name: label for name, (_, label) in _ENTRIES.items()}


def check_ranker(name: str | None) -> str:
    """The registry key for ``name`` (case and spaces ignored), or a ValueError listing the choices."""
    key = (name or "").strip().lower()
    if key not in _ENTRIES:
        raise ValueError(f"Unknown ranker {name!r}: choose one of {', '.join(_ENTRIES)}.")
    return key


def get_ranker(name: str, service, dataset, retriever=None, **options):
    """``service``: an LLMService (or a bare LLM). ``options``: ``adapter`` (default: whatever adapter
    is active when ``rank`` runs), ``cfg`` (an LLMConfig; default: the service's), and any LLMConfig
    field to override for this ranker (``fuse``, ``fusion_dir``, ``max_history``)."""
    return RANKERS[check_ranker(name)](service, dataset, retriever, **options)


def __getattr__(name: str):
    if name in _BASE_NAMES:
        return getattr(importlib.import_module("recdemo.llm.rankers.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ACTIVE", "RANKERS", "RANKER_LABELS", "Ranker", "ScoredList", "check_ranker", "finish", "get_ranker"]
