"""LLM rankers over SASRec's candidates: ``get_ranker(name, service, dataset, retriever)``.

- ``palr``: writes the top-k titles, decoding constrained to the candidates (PALR).
- ``score``: log-likelihood of each candidate's title as the answer, one shared prompt (fast).
- ``tallrec``: P(Yes) to "will the user enjoy X?" per candidate (TALLRec).
- ``genrec``: generates titles from the whole catalog (minus the history) by beam search (GenRec).

Each returns ``rank(req) -> list[RankedItem]`` (k distinct valid items, best first, fused with
SASRec by the weight chosen on validation) and ``prompt(req) -> str``.
"""
from __future__ import annotations

from recdemo.llm.rankers.base import ACTIVE, Ranker, ScoredList, finish
from recdemo.llm.rankers.genrec import GenRecRanker
from recdemo.llm.rankers.palr import PALRRanker
from recdemo.llm.rankers.score import ScoreRanker
from recdemo.llm.rankers.tallrec import TALLRecRanker

RANKERS: dict[str, type[Ranker]] = {
    "palr": PALRRanker,
    "score": ScoreRanker,
    "tallrec": TALLRecRanker,
    "genrec": GenRecRanker,
}


def get_ranker(name: str, service, dataset, retriever=None, **options) -> Ranker:
    """``service``: an LLMService (or a bare LLM). ``options``: adapter (default: whatever adapter
    is active when ``rank`` runs), fuse, max_history, fusion_dir, fusion_default, use_cache."""
    key = (name or "").strip().lower()
    if key not in RANKERS:
        raise ValueError(f"unknown ranker {name!r}: choose one of {', '.join(RANKERS)}")
    return RANKERS[key](service, dataset, retriever, **options)


__all__ = ["ACTIVE", "RANKERS", "Ranker", "ScoredList", "finish", "get_ranker"]
