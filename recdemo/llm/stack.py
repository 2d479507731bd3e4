"""The one place that assembles dataset -> text index -> retriever -> LLM service -> rankers.

``Stack.from_config(cfg, dataset=None, service=None)`` returns an object whose parts are built on
first use, once, even with concurrent callers (one lock per part: a title search must not wait
while SASRec trains on its first use). The pipeline's ``Recommender``, ``evaluate``, the fine-tune
CLI and the bench scripts all build their parts here, so they run with the same settings.

Choices a caller makes explicitly instead of by building its own stack:
- ``retriever_text_fallback``: whether SASRec falls back to text similarity for histories it never
  saw (the app: yes; evaluation: no, every evaluation history is SASRec's own training data and the
  text index would load an embedding model for nothing).
- ``optional_retriever()``: None (with the reason) instead of training SASRec when no checkpoint exists.
- ``profile_fn(kind)``: the profile a ranker sees: ``heuristic`` (attributes counted in the history,
  no LLM; what every recorded rerank number used) or ``llm`` (the pipeline's LLM-written profile).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Callable

import torch

from recdemo.data.dataset import load_from_config
from recdemo.errors import ModelNotFound
from recdemo.llm.models import LLM, load_llm
from recdemo.llm.profile import ProfileGenerator, heuristic_profile
from recdemo.llm.rankers import get_ranker
from recdemo.llm.service import LLMService
from recdemo.retrieval.retriever import Retriever
from recdemo.retrieval.text_index import TextIndex

log = logging.getLogger(__name__)

PROFILES = ("heuristic", "llm")


class Stack:
    def __init__(self, cfg, dataset=None, service=None, retriever=None, text_index=None,
                 retriever_text_fallback: bool = True, train_retriever: bool = True):
        self.cfg = cfg
        self._dataset, self._service, self._retriever, self._text_index = dataset, service, retriever, text_index
        self.retriever_text_fallback, self.train_retriever = retriever_text_fallback, train_retriever
        self._text_index_failed = False
        self._rankers: dict[tuple, object] = {}
        self._profiles: ProfileGenerator | None = None
        self._locks = {k: threading.RLock() for k in ("dataset", "service", "text", "retriever", "ranker",
                                                      "profile")}

    @classmethod
    def from_config(cls, cfg, dataset=None, service=None, dataset_name: str | None = None,
                    data_dir: str | None = None, **options) -> "Stack":
        """``dataset_name``/``data_dir`` override ``cfg.data`` (the config the stack keeps says so too)."""
        if dataset_name is not None or data_dir is not None:
            data = replace(cfg.data, dataset=dataset_name or cfg.data.dataset, data_dir=data_dir)
            cfg = replace(cfg, data=data)
        return cls(cfg, dataset=dataset, service=service, **options)

    @property
    def dataset(self):
        with self._locks["dataset"]:
            if self._dataset is None:
                self._dataset = load_from_config(self.cfg.data)
            return self._dataset

    @property
    def service(self) -> LLMService:
        with self._locks["service"]:
            if self._service is None:
                self._service = LLMService(self.cfg.llm)
            return self._service

    @property
    def text_index(self):
        """The TextIndex (typo-tolerant search, content similarity), or None if it cannot be built."""
        with self._locks["text"]:
            if self._text_index is None and not self._text_index_failed:
                try:
                    self._text_index = TextIndex.for_dataset(self.dataset, self.cfg.retrieval)
                except Exception:  # noqa: BLE001 - search and explanations work without it
                    log.warning("text index unavailable for %s", self.dataset.name, exc_info=True)
                    self._text_index_failed = True
            return self._text_index

    @property
    def retriever(self):
        """SASRec for this dataset (trained now when ``train_retriever`` and no checkpoint exists)."""
        return self.build_retriever()

    def build_retriever(self, cancel=None, on_epoch=None):
        """``retriever``, where a training it needs can be cancelled (``cancel``: threading.Event;
        TrainingCancelled) and reports ``on_epoch(epoch, total, record)`` (the app's progress)."""
        with self._locks["retriever"]:
            if self._retriever is None:
                text = self.text_index if self.retriever_text_fallback else None
                self._retriever = Retriever.for_dataset(self.dataset, self.cfg.retrieval,
                                                        train_if_missing=self.train_retriever, text_index=text,
                                                        cancel=cancel, on_epoch=on_epoch)
            return self._retriever

    @property
    def built_retriever(self):
        """The retriever if it has been built, else None (never builds one)."""
        return self._retriever

    def optional_retriever(self, note: Callable[[str], None] | None = None):
        """The retriever, or None when it has no checkpoint (``note`` gets the reason)."""
        try:
            return self.retriever
        except ModelNotFound as e:
            if note is not None:
                note(str(e))
            return None

    def ranker(self, name: str, retriever="built", **options):
        """The named ranker (registry: ``llm.rankers.RANKERS``), one per (name, options).
        ``retriever``: "built" (default) is whatever retriever exists now, None when retrieval failed
        or never ran (as the pipeline wants); pass one explicitly to pin it."""
        with self._locks["ranker"]:
            chosen = self._retriever if retriever == "built" else retriever
            key = name if retriever == "built" and not options else (name, id(chosen), tuple(sorted(options.items())))
            if key not in self._rankers:
                self._rankers[key] = get_ranker(name, self.service, self.dataset, chosen, **options)
            return self._rankers[key]

    @property
    def profiles(self) -> ProfileGenerator:
        with self._locks["profile"]:
            if self._profiles is None:
                self._profiles = ProfileGenerator(self.service, self.dataset.catalog, self.cfg.llm.max_history)
            return self._profiles

    def profile_fn(self, kind: str = "heuristic") -> Callable:
        """``(catalog, history) -> Profile`` of the named kind (see the module doc)."""
        if kind == "heuristic":
            return heuristic_profile_of
        if kind == "llm":
            return lambda catalog, history: self.profiles.generate(list(history))
        raise ValueError(f"unknown profile {kind!r}: choose one of {', '.join(PROFILES)}")


def load_training_llm(cfg_llm) -> LLM:
    """The base model, placed for this process (several under `accelerate launch`)."""
    if torch.cuda.is_available() and cfg_llm.device != "cpu":
        from accelerate import PartialState  # only on CUDA: keeps CPU start-up free of accelerate
        state = PartialState()
        if state.num_processes > 1:
            # device_map="auto" would split the model over every GPU in each process; load on the
            # CPU instead (bf16 halves RAM) and let accelerate move one replica to each GPU.
            dtype = "bfloat16" if cfg_llm.dtype == "auto" else cfg_llm.dtype
            llm = load_llm(replace(cfg_llm, device="cpu", dtype=dtype))
            llm.device = state.device
            return llm
    return load_llm(cfg_llm)


def heuristic_profile_of(catalog, history):
    """The heuristic profile of a history (no LLM)."""
    return heuristic_profile(catalog, list(history))
