"""The one object the app and the CLI call: titles in, explained recommendations out.

    titles -> catalog indices -> SASRec top-N -> LLM profile -> LLM ranker (fused) -> explanations

``Recommender.recommend`` runs the stages in that order, times each, and returns a
``records.Recommendation`` (JSON-friendly via ``to_dict()``). Thread-safe: retrieval runs outside
the model lock; every model call holds ``service.lock`` through ``service.use_adapter`` (the app
serves several users from one model while a fine-tune runs).
"""
from __future__ import annotations

import logging
import random
import threading
import time

import numpy as np

from recdemo.llm.explain import Explainer
from recdemo.errors import ModelNotFound
from recdemo.llm.profile import ProfileGenerator, heuristic_profile
from recdemo.llm.rankers import check_ranker
from recdemo.pipeline.personas import build_personas
from recdemo.llm.prompts import domain_for
from recdemo.llm.service import LLMService
from recdemo.llm.stack import Stack
from recdemo.records import Candidate, RerankRequest, Recommendation

log = logging.getLogger(__name__)


class Recommender:
    def __init__(self, dataset, cfg, service: LLMService | None = None, retriever=None, text_index=None,
                 stack: Stack | None = None):
        # Every part (retriever, text index, service, rankers, profiles) comes from one Stack, the
        # same builder evaluation and fine-tuning use.
        self.stack = stack if stack is not None else Stack(cfg, dataset=dataset, service=service,
                                                           retriever=retriever, text_index=text_index)
        self.dataset, self.cfg, self.catalog, self.name = dataset, cfg, dataset.catalog, dataset.name
        self.domain = domain_for(self.catalog)
        check_ranker(cfg.llm.ranker)  # a bad RECDEMO_RANKER fails here, not on the first request
        self.service = self.stack.service
        self._explainer: Explainer | None = None
        self._explain_lock = threading.RLock()
        self._personas: dict[str, list[str]] | None = None

    @classmethod
    def from_config(cls, cfg, dataset_name: str | None = None, data_dir: str | None = None,
                    service: LLMService | None = None) -> "Recommender":
        stack = Stack.from_config(cfg, service=service, dataset_name=dataset_name, data_dir=data_dir)
        return cls(stack.dataset, stack.cfg, stack=stack)

    # -- lazily built parts (each once, even with concurrent callers: see llm/stack.py) --
    @property
    def text_index(self):
        """The TextIndex (typo-tolerant search, content similarity), or None if it cannot be built."""
        return self.stack.text_index

    @property
    def retriever(self):
        return self.stack.retriever

    def ranker(self, name: str):
        # the retriever as built by the retrieval stage (None when it fell back to text similarity)
        return self.stack.ranker(name)

    @property
    def profiles(self) -> ProfileGenerator:
        return self.stack.profiles

    @property
    def explainer(self) -> Explainer:
        with self._explain_lock:
            if self._explainer is None:
                self._explainer = Explainer(self.service, self.dataset, self.stack.built_retriever, self.text_index,
                                            max_history=self.cfg.llm.max_history)
            return self._explainer

    # -- titles --
    def search_titles(self, query: str, k: int = 10) -> list[dict]:
        """Catalog items matching a typed query (typo tolerant), best first, with a score."""
        query = (query or "").strip()
        if not query:
            return []
        index = self.text_index
        if index is not None:
            hits = index.search(query, k)
        else:
            from recdemo.data.title_search import TitleMatcher
            scores = TitleMatcher(self.catalog.titles).scores(query)
            top = np.argsort(-scores, kind="stable")[:k]
            hits = [(int(i), float(scores[i])) for i in top if scores[i] > 0]
        return [{**self.catalog.item(i), "score": round(float(s), 4)} for i, s in hits]

    def resolve(self, history) -> list[int]:
        """Titles (or catalog indices) -> catalog indices, oldest first; repeats keep the latest."""
        if history is None or isinstance(history, str):
            history = [history] if history else []
        items, unknown = [], []
        for entry in history:
            if isinstance(entry, (int, np.integer)) and not isinstance(entry, bool):
                if not 0 <= int(entry) < len(self.catalog):
                    raise ValueError(f"Item index {int(entry)} is not in the catalog "
                                     f"(0 to {len(self.catalog) - 1}).")
                items.append(int(entry))
                continue
            title = str(entry).strip()
            if not title:
                continue
            index = self.catalog.find_title(title)
            if index is None:
                unknown.append(title)
                continue
            items.append(index)
        if unknown:  # all of them in one message: fixing one typo at a time is tedious
            raise ValueError(" ".join(self._unknown(t) for t in dict.fromkeys(unknown)))
        if not items:
            raise ValueError(f"The history is empty: pick at least one {self.domain.item} you liked "
                             "(search for a title, choose a persona, or load a random user).")
        return list(reversed(list(dict.fromkeys(reversed(items)))))

    def _unknown(self, title: str) -> str:
        try:
            close = [h["title"] for h in self.search_titles(title, 3)]
        except Exception:  # noqa: BLE001 - a suggestion failure must not hide the real message
            close = []
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"Unknown title {title!r}.{hint}"

    # -- ready-made histories --
    def random_user_history(self, seed: int | None = None, max_items: int = 20) -> list[str]:
        """The last ``max_items`` titles of a real user's training history (no validation/test items)."""
        train = self.dataset.train_sequences()
        users = [u for u, s in enumerate(train) if len(s) >= 3] or [u for u, s in enumerate(train) if len(s)]
        if not users:
            raise ValueError(f"dataset {self.name!r} has no user histories")
        user = random.Random(seed).choice(users)
        return [self.catalog.titles[int(i)] for i in train[user][-max_items:]]

    def personas(self, n: int = 12, size: int = 8) -> dict[str, list[str]]:
        """Ready-made histories from the catalog itself: the most-watched items of an attribute
        ("Animation fan"), or of a frequent title word for catalogs without attributes."""
        if self._personas is None:
            self._personas = build_personas(self.dataset, n, size)
        return self._personas

    # -- the pipeline --
    def recommend(self, history, ranker: str | None = None, n_candidates: int = 50, k: int = 10,
                  adapter: str | None = "auto", with_profile: bool = True,
                  with_explanations: bool = True) -> Recommendation:
        start = time.perf_counter()
        timings: dict[str, float] = {}
        warnings: list[str] = []
        ranker_name = self._ranker_name(ranker)
        n_candidates, k = self._check_sizes(history, n_candidates, k)  # before any model work
        if ranker_name != "genrec" and k > n_candidates:
            raise ValueError(f"Cannot pick {k} results from {n_candidates} candidates: ask for fewer results "
                             "or more candidates.")
        hist = self.resolve(history)
        adapter_name = self._adapter(adapter, ranker_name, warnings)

        t = time.perf_counter()
        candidates = self._candidates(hist, n_candidates, warnings)
        timings["retrieval"] = time.perf_counter() - t
        if not candidates:
            raise ValueError("Every item of this catalog is already in the history: nothing left to recommend.")
        k = min(k, len(candidates)) if ranker_name != "genrec" else k

        profile = None
        t = time.perf_counter()
        if with_profile:
            try:
                profile = self.profiles.generate(hist)
            except Exception as e:  # noqa: BLE001 - a profile is helpful, not essential
                log.warning("profile generation failed", exc_info=True)
                warnings.append(f"The LLM profile failed ({type(e).__name__}: {e}); showing the history's "
                                "most frequent attributes instead.")
                profile = heuristic_profile(self.catalog, hist)
        timings["profile"] = time.perf_counter() - t

        t = time.perf_counter()
        req = RerankRequest(history=hist, candidates=candidates, profile=profile, k=k)
        rk = self.ranker(ranker_name)
        with self.service.use_adapter(adapter_name):
            ranked = list(rk.rank(req))
            ranker_prompt = rk.prompt(req)
        ranked = self._check_ranked(ranked, candidates, hist, k, ranker_name, warnings)
        timings["rerank"] = time.perf_counter() - t

        t = time.perf_counter()
        explanations = {}
        if with_explanations and ranked:
            items = [r.index for r in ranked]
            try:
                explanations = {e.index: e for e in self.explainer.explain(hist, items)}
            except Exception as e:  # noqa: BLE001 - fall back to evidence-only sentences
                log.warning("LLM explanations failed", exc_info=True)
                warnings.append(f"The LLM explanations failed ({type(e).__name__}); showing evidence-based "
                                "sentences instead.")
                explanations = {e.index: e for e in self.explainer.explain(hist, items, use_llm=False)}
        timings["explain"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start

        prompt = ""
        if profile is not None and profile.prompt:
            prompt += f"===== profile prompt =====\n{profile.prompt}\n\n"
        prompt += f"===== {ranker_name} ranker prompt =====\n{ranker_prompt}"
        return Recommendation(
            history=[self.catalog.item(i) for i in hist],
            profile=profile,
            candidates=[{**self.catalog.item(c.index), "rank": c.rank, "score": round(c.score, 4)}
                        for c in candidates],
            results=[self._result(rank, r, explanations.get(r.index)) for rank, r in enumerate(ranked, 1)],
            prompt=prompt, timings={s: round(v, 3) for s, v in timings.items()}, ranker=ranker_name,
            model=self.service.describe(), adapter=adapter_name, warnings=warnings)

    def _ranker_name(self, requested: str | None) -> str:
        name = (requested or self.cfg.llm.ranker).strip().lower()
        return name if name in self.stack._rankers else check_ranker(name)

    def _check_sizes(self, history, n_candidates, k) -> tuple[int, int]:
        """Every size a request chooses, within cfg.limits: one call must not run the server out of
        memory (k results, each explained; n candidates, each scored by the LLM)."""
        limits = self.cfg.limits
        if history is not None and not isinstance(history, str):
            limits.check("max_history", len(history), "history items", minimum=0)
        return (limits.check("max_candidates", int(n_candidates), "candidates"),
                limits.check("max_results", int(k), "results"))

    def _adapter(self, requested, ranker: str, warnings: list[str]) -> str | None:
        """The adapter name to use. An explicit name that cannot be used is an error; "auto" falls
        back to the base model with a warning (e.g. the shipped adapter was trained for another model)."""
        name = self.service.resolve_adapter(requested, self.name, ranker)
        if requested == "auto" and name is not None:
            try:
                with self.service.lock:
                    self.service.adapters.load(name)
            except ModelNotFound as e:
                warnings.append(f"The adapter {name!r} cannot be used, so the base model ranks: {e}")
                return None
        return name

    def _candidates(self, hist: list[int], n: int, warnings: list[str]) -> list[Candidate]:
        """SASRec's top-n; when SASRec cannot read the history (or is unavailable): text similarity."""
        pairs = None
        try:
            retriever = self.retriever
            method = retriever.method_for(hist) if hasattr(retriever, "method_for") else "sasrec"
            if method != "sasrec":
                warnings.append(f"SASRec never saw these {self.domain.items} in training, so the candidates "
                                f"come from {'text similarity' if method == 'text' else 'popularity'}.")
            pairs = retriever.top_k(hist, n)
        except Exception as e:  # noqa: BLE001 - e.g. no checkpoint and training impossible here
            log.warning("SASRec retrieval failed", exc_info=True)
            if self.text_index is None:
                raise
            warnings.append(f"SASRec is unavailable ({e}); the candidates come from text similarity.")
            pairs = self.text_index.similar(hist, n)
        seen = set(hist)
        pairs = [(int(i), float(s)) for i, s in pairs if int(i) not in seen][:n]
        return [Candidate(index=i, score=s, rank=r) for r, (i, s) in enumerate(pairs, 1)]

    def _check_ranked(self, ranked, candidates, hist, k, ranker_name, warnings):
        """Keep the ranker's items only if valid (distinct, not in the history, from the candidates
        unless genrec); top up from SASRec's order when the ranker returned fewer than k."""
        allowed = {c.index for c in candidates}
        seen, out = set(hist), []
        for r in ranked:
            i = int(r.index)
            if i in seen or not 0 <= i < len(self.catalog) or (ranker_name != "genrec" and i not in allowed):
                continue
            seen.add(i)
            out.append(r)
        if len(out) < k:
            from recdemo.records import RankedItem
            missing = k - len(out)
            for c in candidates:
                if len(out) >= k:
                    break
                if c.index not in seen:
                    seen.add(c.index)
                    out.append(RankedItem(index=c.index, llm_score=float("nan"), score=c.score,
                                          retrieval_rank=c.rank))
            warnings.append(f"The {ranker_name} ranker returned {missing} item(s) fewer than asked; "
                            "the rest follow SASRec's order.")
        return out[:k]

    def _result(self, rank: int, r, explanation) -> dict:
        rr = r.retrieval_rank
        out = {**self.catalog.item(r.index), "rank": rank, "score": _num(r.score), "llm_score": _num(r.llm_score),
               "retrieval_rank": rr, "move": (int(rr) - rank) if rr is not None else None,
               "evidence": [], "rationale": "", "rationale_source": ""}
        if explanation is not None:
            out.update(evidence=explanation.evidence, rationale=explanation.rationale,
                       rationale_source=explanation.rationale_source)
        return out


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 4)
