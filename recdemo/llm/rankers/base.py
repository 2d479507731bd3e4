"""What every LLM ranker shares: access to the model (lock + adapter), prompts, fusion, output.

A ranker turns a ``RerankRequest`` into ``ScoredList`` (the items it considered with its own LLM
scores and SASRec's), then ``finish`` fuses the two and returns the top k as ``RankedItem``s.
``rank`` = ``score_list`` + ``finish``; the evaluation calls the two halves separately so the LLM
runs once per user while every fusion weight of the grid is tried.

The model: ``service`` is an ``LLMService`` (``.llm``, ``.lock``, ``.use_adapter``) or a bare
``LLM`` (tests, notebooks). By default a ranker runs with whatever adapter is active in the service
(the pipeline wraps the call in ``service.use_adapter(name)``); ``adapter=`` pins one instead.

Settings (fuse, max_history, fusion_dir, decode_backend) come from an ``LLMConfig``: ``cfg=``, else the
service's, else the dataclass defaults; keyword overrides replace single fields of it.

Tokens: a ranker keeps the ids of the short texts it encodes on every call (title lines, list numbers,
a prompt's head) in its ``TokenCache``, so a catalog's lines are tokenized once per process.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from recdemo.config import LLMConfig
from recdemo.records import RankedItem, RerankRequest
from recdemo.llm import prompts as P
from recdemo.llm.fusion import fuse, fused_order
from recdemo.llm.fusion_store import FusionStore, lookup_weight
from recdemo.llm.models import LLM

ACTIVE = "<active>"  # adapter sentinel: use the service's active adapter as it is
MAX_CACHED_TEXTS = 1 << 16  # token ids of short texts (title lines, list numbers) a ranker keeps: ~5 MB


class TokenCache:
    """Token ids (no special tokens) of short texts a ranker encodes again and again: candidate
    lines, history lines, list numbers. Bound to one tokenizer (a different one empties it: the ids
    belong to it) and bounded, least recently used out. Each text is tokenized on its own, exactly as
    a batch call tokenizes it, so cached and fresh ids are the same; misses go in one batch call."""

    def __init__(self, max_texts: int = MAX_CACHED_TEXTS):
        self.max_texts = max_texts
        self.tokenizer = None  # held, so its identity cannot be reused by another object
        self._ids: OrderedDict[tuple[bool, str], tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def encode(self, tokenizer, texts: list[str], special: bool = False) -> list[tuple[int, ...]]:
        """Token ids of each text; ``special``: with the special tokens the tokenizer adds (a prompt's head)."""
        keys = [(special, t) for t in texts]
        with self._lock:
            if tokenizer is not self.tokenizer:
                self.tokenizer, self._ids = tokenizer, OrderedDict()
            missing = list(dict.fromkeys(k for k in keys if k not in self._ids))
            if missing:
                encoded = tokenizer([t for _, t in missing], add_special_tokens=special)["input_ids"]
                for key, ids in zip(missing, encoded):
                    self._ids[key] = tuple(ids)
            out = []
            for key in keys:
                self._ids.move_to_end(key)
                out.append(self._ids[key])
            while len(self._ids) > self.max_texts:
                self._ids.popitem(last=False)
            return out


@dataclass
class ScoredList:
    items: list[int]  # catalog indices the ranker considered (candidates, or generated for genrec)
    llm: np.ndarray  # the ranker's own score per item (higher = better)
    sasrec: np.ndarray | None  # SASRec's score per item (None: nothing to fuse with)
    retrieval_rank: list[int | None]  # 1-based rank in the SASRec list, None outside it
    info: dict = field(default_factory=dict)  # tokens, forward calls, seconds, adapter ...


class _BareService:
    """An ``LLM`` without a service: one lock, no adapters, the default settings."""

    def __init__(self, llm: LLM):
        self.llm, self.lock, self.cfg = llm, threading.RLock(), LLMConfig()

    @contextmanager
    def use_adapter(self, name):
        if name is not None:
            raise ValueError(f"adapter {name!r} needs an LLMService; a bare model has no adapters")
        with self.lock:
            yield self.llm


class Ranker:
    name = "base"

    def __init__(self, service, dataset, retriever=None, *, adapter=ACTIVE, cfg: LLMConfig | None = None,
                 **overrides):
        """``overrides``: LLMConfig fields for this ranker alone (``fuse=False``, ``fusion_dir=...``)."""
        self.service = _BareService(service) if isinstance(service, LLM) else service
        self.cfg = replace(cfg or self.service.cfg, **overrides)
        self.dataset, self.catalog, self.retriever = dataset, dataset.catalog, retriever
        self.domain = P.domain_for(self.catalog)
        self.adapter = adapter
        self.fuse = self.cfg.fuse
        self.max_history = self.cfg.max_history
        # A fusion_dir given to this ranker alone (tests, benches) takes tuned weights too; from the
        # config they go to the cache, so tuning never rewrites a shipped file.
        self.store = FusionStore(self.cfg.fusion_dir,
                                 None if "fusion_dir" in overrides else self.cfg.fusion_cache_dir)
        self.last_info: dict = {}
        self.token_cache = TokenCache()

    # -- the model --
    @contextmanager
    def session(self):
        """(llm, adapter name) with the lock held, in inference mode."""
        if self.adapter == ACTIVE:
            with self.service.lock:
                manager = getattr(self.service, "adapters", None)  # LLMService: created on first use
                active = getattr(manager, "active", None)
                with torch.inference_mode():
                    yield self.service.llm, active
        else:
            with self.service.use_adapter(self.adapter) as llm, torch.inference_mode():
                yield llm, self.adapter

    @property
    def tokenizer(self):
        return self.service.llm.tokenizer

    # -- prompts (the same fields the fine-tuning examples use: recdemo/llm/examples.py) --
    def history_text(self, history) -> str:
        return P.format_history(self.catalog, history, max_items=self.max_history, with_attributes=False)

    def render(self, template: str, **fields) -> str:
        return P.render(self.tokenizer, template, self.domain, **fields)

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt tokens exactly as the fine-tuning examples encode them (special tokens included)."""
        return list(self.tokenizer(text)["input_ids"])

    def answer_tokens(self, items, end: str) -> list[tuple[list[int], int]]:
        """(token ids of 'title' + end, item) per item: what the model must write to name it."""
        return self.line_tokens(items, lambda title: title + end)

    def line_tokens(self, items, line) -> list[tuple[list[int], int]]:
        """(token ids of ``line(title)``, item) per item, with the title as prompts show it
        (from the ranker's ``token_cache``: a catalog's lines are tokenized once)."""
        items = [int(i) for i in items]
        texts = [line(P.prompt_title(self.catalog.titles[i])) for i in items]
        return [(list(t), i) for t, i in zip(self.token_cache.encode(self.tokenizer, texts), items)]

    def encode_pieces(self, head: str, pieces) -> list[int]:
        """``prompts.encode_pieces(tokenizer, head, pieces)[0]`` with the pieces' ids from the cache
        (every piece is tokenized on its own there too, so the ids are the same)."""
        ids = list(self.token_cache.encode(self.tokenizer, [head], special=True)[0])
        for toks in self.token_cache.encode(self.tokenizer, [text for text, _ in pieces]):
            ids.extend(toks)
        return ids

    def fit(self, build, history, reserve: int = 0, size=len):
        """(history kept, ``build(history kept)``): the newest <= ``max_history`` items whose prompt
        leaves ``reserve`` tokens of the model's context for what the call feeds after it
        (``prompts.fit_to_context``: the one way every ranker's prompt meets the context)."""
        recent = [int(h) for h in history][-self.max_history:]
        limit = P.context_limit(self.service.llm) - reserve
        return P.fit_to_context(build, recent, limit, size)

    def prompt(self, req: RerankRequest) -> str:
        raise NotImplementedError

    # -- ranking --
    def score_list(self, req: RerankRequest) -> ScoredList:
        raise NotImplementedError

    def rank(self, req: RerankRequest) -> list[RankedItem]:
        check_request(req, needs_candidates=self.name != "genrec")
        start = time.perf_counter()
        scored = self.score_list(req)
        weight, method, source = (1.0, "rank", "no-fuse")
        if self.fuse and scored.sasrec is not None:
            weight, method, source = self.fusion_weight(scored.info.get("adapter"))
        out = finish(scored, req.k, weight, method)
        self.last_info = {**scored.info, "fusion_weight": weight, "fusion_method": method,
                          "fusion_source": source, "seconds": time.perf_counter() - start}
        return out

    def fusion_weight(self, adapter: str | None) -> tuple[float, str, str]:
        meta = None
        if adapter is not None and hasattr(self.service, "adapters"):
            try:
                meta = self.service.adapters.meta(adapter)
            except Exception:  # an unreadable meta.json only loses the meta weight
                meta = None
        return lookup_weight(self.store, self.dataset, self.service.llm.name, adapter, self.name, meta)

    def candidate_list(self, req: RerankRequest) -> ScoredList:
        """The request's candidates (deduplicated, history removed) with SASRec's scores; llm empty."""
        seen, items, sas, ranks = set(int(h) for h in req.history), [], [], []
        for c in req.candidates:
            if int(c.index) in seen or not 0 <= int(c.index) < len(self.catalog):
                continue
            seen.add(int(c.index))
            items.append(int(c.index))
            sas.append(float(c.score))
            ranks.append(int(c.rank))
        return ScoredList(items, np.zeros(len(items)), np.asarray(sas), ranks)


def finish(scored: ScoredList, k: int, weight: float = 1.0, method: str = "rank") -> list[RankedItem]:
    """Top k of the list by the fused score (``weight`` = 1: the LLM alone; 0: SASRec's order)."""
    if not scored.items:
        return []
    if scored.sasrec is None:
        order = np.lexsort((np.arange(len(scored.items)), -np.asarray(scored.llm, dtype=np.float64)))
        fused = np.asarray(scored.llm, dtype=np.float64)
    else:
        order = fused_order(scored.sasrec, scored.llm, weight, method)
        fused = np.round(fuse(scored.sasrec, scored.llm, weight, method), 12)  # as fused_order compares
    return [RankedItem(index=int(scored.items[i]), llm_score=float(scored.llm[i]), score=float(fused[i]),
                       retrieval_rank=scored.retrieval_rank[i]) for i in order[:k]]


def check_request(req: RerankRequest, needs_candidates: bool = True) -> None:
    if req.k < 1:
        raise ValueError(f"k must be at least 1, got {req.k}")
    if not req.history:
        raise ValueError("the history is empty: pick at least one item the user liked")
    if needs_candidates and not req.candidates:
        raise ValueError("there are no candidates to rerank")

