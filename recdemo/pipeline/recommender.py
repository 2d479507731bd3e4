"""The one object the app and the CLI call: titles in, explained recommendations out.

    titles -> catalog indices -> SASRec top-N -> LLM profile -> LLM ranker (fused) -> explanations

``Recommender.recommend_stages`` runs the stages, times each, and yields a ``records.Recommendation``
(JSON-friendly via ``to_dict()``) as each stage finishes and as each explanation is checked (the page
and /recommend_stream show them as they come); ``recommend`` is its last state. A ranker that does
not read the profile (score) ranks right after retrieval, and the profile's two rows (its keyword
line, and its summary after the history's grounded keywords) share the explanations' decoder call
(the profile is shown last). Thread-safe: retrieval runs outside
the model lock; every model call holds ``service.lock`` through ``service.use_adapter`` (the app
serves several users from one model while a fine-tune runs). Concurrent requests share model calls
(llm/coalesce.py): their profiles and explanations through ``LLMService`` (``run``/``stream``), their reranks (rankers with
a batched form, ``batch_score.batchable``) through ``batch_score.rank_batch``.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from recdemo.data.title_search import TitleMatcher
from recdemo.llm.batch_score import batchable, rank_batch
from recdemo.llm.explain import Explainer
from recdemo.errors import ModelNotFound
from recdemo.llm.profile import ProfileGenerator, heuristic_profile
from recdemo.llm.rankers import check_ranker
from recdemo.pipeline.personas import build_personas
from recdemo.pipeline.steering import ProfileEdit, Steer, edit_profile, lift
from recdemo.llm.prompts import domain_for
from recdemo.llm.service import LLMService
from recdemo.llm.stack import Stack
from recdemo.records import Candidate, Explanation, Keyword, Profile, RankedItem, RerankRequest, Recommendation

log = logging.getLogger(__name__)
STAGES = ("retrieval", "profile", "rerank", "explain")


@dataclass
class _Run:
    """One request's state between the stages of ``Recommender.recommend_stages``."""
    hist: list[int]
    ranker: str
    k: int
    started: float
    edit: ProfileEdit | None = None
    excluded: set[int] = field(default_factory=set)
    adapter: str | None = None
    auto_adapter: bool = False
    candidates: list[Candidate] = field(default_factory=list)
    profile: Profile | None = None
    steer: Steer | None = None
    ranked: list[RankedItem] = field(default_factory=list)
    steered: dict[int, dict] = field(default_factory=dict)
    ranker_prompt: str = ""
    explanations: dict[int, Explanation] = field(default_factory=dict)
    explain_failed: bool = False
    keyword_line: str | None = None  # the profile's keyword pass, when written in the explanations' call
    summary_line: str | None = None  # and its summary row, written in the same call
    profile_draft_s: float = 0.0  # time spent on that profile before the call (its prompt)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


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
        self._profile_readers: dict[str, bool] = {}  # ranker -> whether its prompt shows the profile
        # concurrent reranks with the same ranker and adapter: one batched scoring call
        self._reranks = self.service.coalescer(self._rank_many, cfg.llm.coalesce_reranks)

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
                                            max_history=self.cfg.llm.max_history,
                                            max_new_tokens=self.cfg.llm.explain_new_tokens,
                                            facts=self.cfg.llm.explain_facts,
                                            cache_rows=self.cfg.llm.explain_cache_rows)
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
            # No catalog title is longer than a field may be: refuse at once, never fuzzy-match megabytes.
            self.cfg.limits.check("max_field_chars", len(title), "characters in a title")
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
        shown = title if len(title) <= 80 else title[:79] + "…"  # an error never repeats a huge input
        return f"Unknown title {shown!r}.{hint}"

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
                  adapter: str | None = "auto", with_profile: bool = True, with_explanations: bool = True,
                  profile_edit=None, exclude=()) -> Recommendation:
        """The final state of ``recommend_stages`` (one code path for the page, the API and the CLI)."""
        state = None
        for state in self.recommend_stages(history, ranker, n_candidates, k, adapter, with_profile,
                                           with_explanations, profile_edit, exclude):
            pass
        return state

    def recommend_stages(self, history, ranker: str | None = None, n_candidates: int = 50, k: int = 10,
                         adapter: str | None = "auto", with_profile: bool = True, with_explanations: bool = True,
                         profile_edit=None, exclude=(), explain_group: int | None = None
                         ) -> Iterator[Recommendation]:
        """Yields the answer as it grows, one ``Recommendation`` per finished stage (``.stage``):
        "retrieval" (SASRec's top-k, provisional; no model call, so it is not held up by other
        requests' model work), "profile", "rerank", "explain" (as each card's sentence is checked;
        at most ``explain_group`` rows per decoder call), and "done" (with the total time). For a
        ranker whose prompt has no profile the profile comes after the explanations (its keyword
        line and summary are written in their call); palr and steered reruns get it before the rerank.
        Everything is checked before any state is yielded.

        ``profile_edit`` (``steering.ProfileEdit`` or its dict): the user's edit of the profile, sent
        to the reranker instead of the LLM's; results it moved carry ``"steer"``. ``exclude``: items
        the user is not interested in, left out of the candidates (the top-k refills from the rest).
        Each card comes as its row finishes (``LLMService.stream``)."""
        run = self._start(history, ranker, n_candidates, k, adapter, exclude, profile_edit)
        yield self._state(run, "retrieval")
        # The profile's two rows ride in the explanations' decoder call when the ranker does not read
        # the profile (score): rerank, then explanations + keyword line + summary, then the profile.
        merged = with_profile and run.edit is None and with_explanations and not self._reads_profile(run)
        if (with_profile or run.edit is not None) and not merged:
            self._profile_stage(run)
            yield self._state(run, "profile")
        # this request's explanation call will follow its rerank: a concurrent one waits for it
        with self.service.expect_run() if with_explanations else nullcontext() as ticket:
            self._rerank_stage(run)
            yield self._state(run, "rerank")
            draft = self._profile_draft(run) if merged else None
            if with_explanations and run.ranked:
                items = [r.index for r in run.ranked]
                group = max(int(explain_group or self.cfg.llm.explain_group), 1)
                for at in range(0, len(items), group):
                    yield from self._explain_stage(run, items[at:at + group], draft if at == 0 else None,
                                                   ticket if at == 0 else None)
        if merged:
            self._profile_stage(run, draft)
            yield self._state(run, "profile")
        # every stage is timed in the final answer (0 when skipped), in pipeline order
        run.timings = {**{s: run.timings.get(s, 0.0) for s in STAGES}, "total": time.perf_counter() - run.started}
        yield self._state(run, "done")

    def _reads_profile(self, run: "_Run") -> bool:
        """Whether ``run.ranker`` reads the profile (its prompt shows it: palr), found once per ranker by
        rendering its prompt with a marked profile; when that cannot be told, it does."""
        if run.ranker not in self._profile_readers:
            marker = "zqxjprofilemarker"
            req = RerankRequest(history=run.hist, candidates=run.candidates, k=run.k,
                                profile=Profile(keywords=[Keyword(marker, list(run.hist[:1]), True)], summary=marker))
            try:
                reads = marker in self.ranker(run.ranker).prompt(req)
            except Exception:  # noqa: BLE001 - unknown: keep the profile first
                log.warning("could not tell whether ranker %s reads the profile", run.ranker, exc_info=True)
                reads = True
            self._profile_readers[run.ranker] = reads
        return self._profile_readers[run.ranker]

    def _start(self, history, ranker, n_candidates, k, adapter, exclude, profile_edit) -> "_Run":
        """Checks (sizes, titles, ranker, adapter name) before any model work, then retrieval."""
        started = time.perf_counter()
        ranker_name = self._ranker_name(ranker)
        n_candidates, k = self._check_sizes(history, n_candidates, k)  # before any model work
        if ranker_name != "genrec" and k > n_candidates:
            raise ValueError(f"Cannot pick {k} results from {n_candidates} candidates: ask for fewer results "
                             "or more candidates.")
        hist = self.resolve(history)
        excluded = self._excluded(exclude)
        edit = ProfileEdit.of(profile_edit) if profile_edit is not None else None
        if edit is not None:  # a steered profile is bounded like every other size a request chooses
            self.cfg.limits.check("max_field_chars", len(edit.summary), "characters in the profile sentence",
                                  minimum=0)
            self.cfg.limits.check("max_field_chars", sum(len(k) for k in edit.keywords),
                                  "characters of profile keywords", minimum=0)
        run = _Run(hist=hist, ranker=ranker_name, k=k, started=started, edit=edit, excluded=excluded)
        run.adapter = self.service.resolve_adapter(adapter, self.name, ranker_name)  # a bad name fails here
        run.auto_adapter = adapter == "auto"
        t = time.perf_counter()
        run.candidates = self._candidates(hist, n_candidates, run.warnings, excluded)
        run.timings["retrieval"] = time.perf_counter() - t
        if not run.candidates:
            raise ValueError("Every item of this catalog is already in the history: nothing left to recommend.")
        run.k = min(k, len(run.candidates)) if ranker_name != "genrec" else k
        # Provisional results: SASRec's own top-k, until the LLM has ranked.
        run.ranked = [RankedItem(c.index, llm_score=float("nan"), score=c.score, retrieval_rank=c.rank)
                      for c in run.candidates[:run.k]]
        return run

    def _excluded(self, exclude) -> set[int]:
        exclude = [e for e in (exclude or []) if str(e).strip()]
        self.cfg.limits.check("max_candidates", len(exclude), "items marked not interested", minimum=0)
        return set(self.resolve(exclude)) if exclude else set()

    def _profile_draft(self, run: "_Run"):
        """The profile to write in the explanations' call (None when even its prompt failed: the
        profile stage then writes it alone, or falls back)."""
        t = time.perf_counter()
        try:
            return self.profiles.draft(run.hist)
        except Exception:  # noqa: BLE001 - reported by the profile stage, which tries again
            log.warning("profile prompt failed", exc_info=True)
            return None
        finally:
            run.profile_draft_s = time.perf_counter() - t  # counted when the profile is there

    def _profile_stage(self, run: "_Run", draft=None) -> None:
        """The profile (``draft``: its rows were written in the explanations' call, in
        ``run.keyword_line`` and ``run.summary_line``; parsing and grounding are left)."""
        t = time.perf_counter()
        try:
            run.profile = (self.profiles.finish(draft, run.keyword_line, summary_text=run.summary_line)
                           if draft is not None
                           else self.profiles.generate(run.hist))
        except Exception as e:  # noqa: BLE001 - a profile is helpful, not essential
            log.warning("profile generation failed", exc_info=True)
            run.warnings.append(f"The LLM profile failed ({type(e).__name__}: {e}); showing the history's "
                                "most frequent attributes instead.")
            run.profile = heuristic_profile(self.catalog, run.hist)
        if run.edit is not None:
            run.profile, run.steer = edit_profile(self.catalog, run.hist, run.profile, run.edit,
                                                  self.cfg.limits.max_profile_keywords)
        run.timings["profile"] = run.profile_draft_s + time.perf_counter() - t

    def _rerank_stage(self, run: "_Run") -> None:
        t = time.perf_counter()
        if run.auto_adapter:
            run.adapter = self._load_auto_adapter(run.adapter, run.warnings)
        # Steering reorders the ranker's list, so it needs more than k of it to pull items in from.
        depth = run.k if not run.steer or run.ranker == "genrec" else min(2 * run.k, len(run.candidates))
        req = RerankRequest(history=run.hist, candidates=run.candidates, profile=run.profile, k=depth)
        rk = self.ranker(run.ranker)
        if batchable(rk):
            ranked = self._reranks.submit((run.ranker, run.adapter), req)
            run.ranker_prompt = rk.prompt(req)  # text only: no need to wait for the model lock again
        else:
            with self.service.use_adapter(run.adapter):
                ranked = list(rk.rank(req))
                run.ranker_prompt = rk.prompt(req)
        ranked = self._check_ranked(ranked, run.candidates, run.hist, depth, run.ranker, run.warnings,
                                    run.excluded)
        run.ranked, run.steered = (lift(self.catalog, ranked, run.steer, run.k) if run.steer
                                   else (ranked[:run.k], {}))
        run.timings["rerank"] = time.perf_counter() - t

    def _rank_many(self, key: tuple, reqs: list[RerankRequest]) -> list[list[RankedItem]]:
        """The rerank coalescer's batch: one request runs exactly as alone (``rank``); several share
        the batched scoring (the same scores up to float rounding, tests/pipeline check it)."""
        name, adapter = key
        rk = self.ranker(name)
        with self.service.use_adapter(adapter):
            return [list(rk.rank(reqs[0]))] if len(reqs) == 1 else rank_batch(rk, reqs)

    def _explain_stage(self, run: "_Run", items: list[int], draft=None, ticket=None) -> Iterator[Recommendation]:
        """Explanations of ``items``, an "explain" state as each card's sentence is checked (one card per
        state, in the order their rows finish). A row whose prompt the model answered before (the same item
        and evidence for another user; a steering rerun keeps most cards) comes from the explainer's cache
        at once; only the new ones cost model time. ``draft``: a profile whose two rows join this call
        (their texts land in ``run.keyword_line`` / ``run.summary_line``); ``ticket``: the one this
        request took before its rerank (``LLMService.expect_run``)."""
        t = time.perf_counter()
        # the profile's two rows (keyword line; summary after the history's grounded keywords) ride along
        extra = [draft.keywords, draft.summary] if draft is not None and draft.keywords is not None else []
        if (items and not run.explain_failed) or extra:
            try:
                plan = self.explainer.plan([(run.hist, items if not run.explain_failed else [])])
                known = [e for _, e in plan.cached()]  # (without the LLM: every card's template)
                if known:
                    run.explanations.update({e.index: e for e in known})
                    run.timings["explain"] = run.timings.get("explain", 0.0) + time.perf_counter() - t
                    yield self._state(run, "explain")
                    t = time.perf_counter()
                generations = ([plan.generation()] if plan.todo else []) + extra
                for rows in self.service.stream(generations, ticket=ticket) if generations else ():
                    found = [e for g, i, text in rows if g == 0 and plan.todo for _, e in plan.judge(i, text)]
                    for g, _, text in rows if extra else ():
                        if g == len(generations) - 2:
                            run.keyword_line = text
                        elif g == len(generations) - 1:
                            run.summary_line = text
                    run.explanations.update({e.index: e for e in found})
                    if found:
                        run.timings["explain"] = run.timings.get("explain", 0.0) + time.perf_counter() - t
                        yield self._state(run, "explain")
                        t = time.perf_counter()
            except Exception as e:  # noqa: BLE001 - fall back to evidence-only sentences
                log.warning("LLM explanations failed", exc_info=True)
                run.warnings.append(f"The LLM explanations failed ({type(e).__name__}); showing evidence-based "
                                    "sentences instead.")
                run.explain_failed = True
        left = [i for i in items if i not in run.explanations]
        if left:
            run.explanations.update({e.index: e for e in self.explainer.explain(run.hist, left, use_llm=False)})
        run.timings["explain"] = run.timings.get("explain", 0.0) + time.perf_counter() - t
        if left or not items:  # the fallback's sentences, or no cards at all
            yield self._state(run, "explain")

    def _state(self, run: "_Run", stage: str) -> Recommendation:
        prompt = ""
        if run.profile is not None and run.profile.prompt:
            prompt += f"===== profile prompt =====\n{run.profile.prompt}\n\n"
        if run.ranker_prompt:
            prompt += f"===== {run.ranker} ranker prompt =====\n{run.ranker_prompt}"
        results = [self._result(rank, r, run.explanations.get(r.index), run.steered.get(int(r.index)))
                   for rank, r in enumerate(run.ranked, 1)]
        return Recommendation(
            history=[self.catalog.item(i) for i in run.hist], profile=run.profile,
            candidates=[{**self.catalog.item(c.index), "rank": c.rank, "score": round(c.score, 4)}
                        for c in run.candidates],
            results=results, prompt=prompt, timings={s: round(v, 3) for s, v in run.timings.items()},
            ranker=run.ranker, model=self.service.describe(), adapter=run.adapter,
            warnings=list(run.warnings), stage=stage)

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

    def _load_auto_adapter(self, name: str | None, warnings: list[str]) -> str | None:
        """"auto" falls back to the base model with a warning when the adapter it found cannot be used
        (e.g. the shipped adapter was trained for another model); an explicit name was checked earlier."""
        if name is None:
            return None
        try:
            with self.service.lock:
                self.service.adapters.load(name)
        except ModelNotFound as e:
            warnings.append(f"The adapter {name!r} cannot be used, so the base model ranks: {e}")
            return None
        return name

    def _candidates(self, hist: list[int], n: int, warnings: list[str], excluded=frozenset()) -> list[Candidate]:
        """SASRec's top-n without the excluded items (each keeps its SASRec rank); when SASRec cannot
        read the history (or is unavailable): text similarity."""
        pairs = None
        try:
            retriever = self.retriever
            method = retriever.method_for(hist) if hasattr(retriever, "method_for") else "sasrec"
            if method != "sasrec":
                warnings.append(f"SASRec never saw these {self.domain.items} in training, so the candidates "
                                f"come from {'text similarity' if method == 'text' else 'popularity'}.")
            pairs = retriever.top_k(hist, n + len(excluded))
        except Exception as e:  # noqa: BLE001 - e.g. no checkpoint and training impossible here
            log.warning("SASRec retrieval failed", exc_info=True)
            if self.text_index is None:
                raise
            warnings.append(f"SASRec is unavailable ({e}); the candidates come from text similarity.")
            pairs = self.text_index.similar(hist, n + len(excluded))
        seen = set(hist)
        pairs = [(int(i), float(s)) for i, s in pairs if int(i) not in seen][:n + len(excluded)]
        return [Candidate(index=i, score=s, rank=r) for r, (i, s) in enumerate(pairs, 1) if i not in excluded][:n]

    def _check_ranked(self, ranked, candidates, hist, k, ranker_name, warnings, excluded=frozenset()):
        """Keep the ranker's items only if valid (distinct, not in the history nor excluded, from the
        candidates unless genrec); top up from SASRec's order when the ranker returned fewer than k."""
        allowed = {c.index for c in candidates}
        seen, out = set(hist) | set(excluded), []
        for r in ranked:
            i = int(r.index)
            if i in seen or not 0 <= i < len(self.catalog) or (ranker_name != "genrec" and i not in allowed):
                continue
            seen.add(i)
            out.append(r)
        if len(out) < k:
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

    def _result(self, rank: int, r, explanation, steer: dict | None = None) -> dict:
        rr = r.retrieval_rank
        out = {**self.catalog.item(r.index), "rank": rank, "score": _num(r.score), "llm_score": _num(r.llm_score),
               "retrieval_rank": rr, "move": (int(rr) - rank) if rr is not None else None,
               "evidence": [], "rationale": "", "rationale_source": "", "failed_checks": [], "repair": ""}
        if explanation is not None:  # failed_checks/repair: why the LLM's sentence was trimmed or replaced
            out.update(evidence=explanation.evidence, rationale=explanation.rationale,
                       rationale_source=explanation.rationale_source,
                       failed_checks=list(explanation.failed_checks), repair=explanation.repair)
        if steer is not None:  # only in steered runs, so an unsteered answer keeps its shape
            out["steer"] = steer
        return out


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 4)
