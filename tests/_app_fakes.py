"""A tiny stand-in for recdemo.pipeline.Recommender, LLMService and run_finetune, used only by the
app's tests (test_events, test_jobs, test_app_api): it returns data in the real shapes
(recdemo.types) so the app's rendering and wiring are exercised without loading any model."""
from __future__ import annotations

import difflib
import json
import random
import threading
import time
from pathlib import Path

from recdemo.records import Keyword, Profile, Recommendation

TITLES = [f"Movie {c}{i} ({1990 + i})" for c in "ABCDEFG" for i in range(10)] + [
    "Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "<script>alert(1)</script> (2001)"]
GENRES = ["Comedy", "Drama", "Action", "Animation", "Horror"]


class FakeRecommender:
    def __init__(self, name: str = "movielens-small", titles=TITLES, fail_with: Exception | None = None):
        self.name = name
        self.titles = list(titles)
        # 1 to 3 genres an item: a reordered card list then shrinks some cards' lists (the streamed diffs)
        self.attrs = [tuple(GENRES[(i + 2 * j) % 5] for j in range(1 + i % 3)) for i in range(len(self.titles))]
        self.fail_with = fail_with
        self.calls = []
        self.dataset = f"dataset:{name}"
        self.retriever = f"retriever:{name}"

    def _item(self, i):
        return {"index": i, "id": str(i), "title": self.titles[i], "attributes": list(self.attrs[i])}

    def _find(self, title):
        low = [t.lower() for t in self.titles]
        if title.lower() in low:
            return low.index(title.lower())
        close = difflib.get_close_matches(title, self.titles, n=3, cutoff=0.3)
        raise ValueError(f"Unknown title {title!r}. Did you mean: {', '.join(close)}?")

    def search_titles(self, query, k=10):
        scored = sorted(range(len(self.titles)), key=lambda i: -difflib.SequenceMatcher(
            None, query.lower(), self.titles[i].lower()).ratio())
        return [self._item(i) for i in scored[:k]]

    def random_user_history(self, seed=None, max_items=20):
        rng = random.Random(seed)
        return rng.sample(self.titles[:60], min(max_items, 6))

    def personas(self):
        return {"Comedy fan": [t for t, a in zip(self.titles, self.attrs) if "Comedy" in a][:4],
                "Horror fan": [t for t, a in zip(self.titles, self.attrs) if "Horror" in a][:4]}

    def recommend(self, history, **kw):
        state = None
        for state in self.recommend_stages(history, **kw):
            pass
        return state

    def recommend_stages(self, history, ranker="score", n_candidates=50, k=10, adapter="auto",
                         with_profile=True, with_explanations=True, **steering):
        """The real stages' shapes: SASRec's list (provisional), the ranker's order, the explanations as
        they come (half, then all), the profile, the final answer; for palr (whose prompt reads the
        profile) the profile comes before the ranker. Each state's timings hold the stages done so far.
        ``steering``: profile_edit / exclude, recorded."""
        self.calls.append(dict(history=list(history), ranker=ranker, n_candidates=n_candidates, k=k,
                               adapter=adapter, **steering))
        if self.fail_with is not None:
            raise self.fail_with
        if not history:
            raise ValueError("The history is empty: pick at least one item.")
        final = self._final(history, ranker, n_candidates, k, adapter, **steering)
        first = [{**c, "retrieval_rank": c["rank"], "move": 0, "evidence": [], "rationale": ""}
                 for c in final.candidates[:k]]
        bare = [{**r, "evidence": [], "rationale": ""} for r in final.results]
        half = final.results[:len(final.results) // 2] + bare[len(final.results) // 2:]
        if ranker == "palr" or steering.get("profile_edit") is not None:
            order = (("retrieval", first, False), ("profile", first, True), ("rerank", bare, True),
                     ("explain", half, True), ("done", final.results, True))
        else:
            order = (("retrieval", first, False), ("rerank", bare, False), ("explain", half, False),
                     ("explain", final.results, False), ("profile", final.results, True),
                     ("done", final.results, True))
        done: list[str] = []
        for stage, results, with_profile in order:
            done.append(stage)
            timings = {s: t for s, t in final.timings.items() if s in done or stage == "done"}
            yield Recommendation(**{**final.__dict__, "stage": stage, "results": results, "timings": timings,
                                    "profile": final.profile if with_profile else None,
                                    "prompt": final.prompt if stage != "retrieval" else ""})

    def _final(self, history, ranker, n_candidates, k, adapter, profile_edit=None, exclude=()):
        hist = [self._find(h) for h in history]
        pool = [i for i in range(len(self.titles)) if i not in hist and i not in exclude][:n_candidates]
        cands = [{**self._item(i), "rank": r, "score": 1.0 - r / 100} for r, i in enumerate(pool, 1)]
        picked = list(reversed(pool[:k - 1])) + [len(self.titles) - 2]  # last one: outside the list
        results = []
        for rank, i in enumerate(picked, 1):
            rr = pool.index(i) + 1 if i in pool else None
            results.append({**self._item(i), "rank": rank, "score": 0.5, "retrieval_rank": rr,
                            "move": None, "evidence": [{"history_index": hist[0], "title": self.titles[hist[0]],
                                                        "kind": "co-occurrence", "value": 7}],
                            "rationale": f"You liked {self.titles[hist[0]]}."})
        profile = Profile(keywords=[Keyword("comedy", [hist[0]], True), Keyword("space opera", [], False)],
                          summary="Enjoys comedy and the occasional drama.")
        if profile_edit is not None:
            profile = Profile(keywords=[Keyword(t, [], True, source="user") for t in profile_edit["keywords"]],
                              summary=profile_edit.get("summary") or profile.summary)
        return Recommendation(history=[self._item(i) for i in hist], profile=profile, candidates=cands,
                              results=results, prompt="### Interaction History Sequence\n...", 
                              timings={"retrieval": 0.01, "profile": 0.2, "rerank": 0.3, "explain": 0.1,
                                       "total": 0.61},
                              ranker=ranker, model="fake-llm on cpu (float32)",
                              adapter=None if adapter is None else "movielens-small")


class FakeService:
    def __init__(self, adapters=("movielens-small",)):
        self._adapters = list(adapters)
        self.llm = "fake-llm"
        self.registered = []

    def available_adapters(self):
        return list(self._adapters)

    def register_adapter(self, path):
        self.registered.append(str(path))
        self._adapters.append(Path(path).name)


def fake_finetune(service, step_seconds=0.01, fail_at: int | None = None):
    """A runner for AppContext(finetune_runner=...): steps with a falling loss, honours cancel,
    writes an adapter folder and registers it, like run_finetune does."""
    def run(spec, dataset, retriever, progress, cancel: threading.Event):
        run.specs.append(spec)
        out, total = spec.out, spec.steps
        for step in range(1, total + 1):
            if cancel.is_set():
                return {"status": "cancelled"}
            if fail_at is not None and step == fail_at:
                raise RuntimeError("CUDA out of memory (simulated)")
            time.sleep(step_seconds)
            progress({"step": step, "total": total, "loss": 2.0 / step, "eta_s": (total - step) * step_seconds,
                      "phase": "train", "metrics": {}})
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "adapter_config.json").write_text(json.dumps({"r": spec.lora_r}))
        (Path(out) / "adapter_model.safetensors").write_bytes(b"fake")
        service.register_adapter(out)
        return {"status": "done", "adapter": Path(out).name, "path": out,
                "metrics_before": {"hr@10": 0.10, "ndcg@10": 0.05},
                "metrics_after": {"hr@10": 0.14, "ndcg@10": 0.07}}
    run.specs = []  # every FineTuneSpec the app handed over, in order
    return run


def fake_context(tmp_path, cfg=None, ready=True, **kw):
    """An AppContext wired to the fakes; adapters and uploads live under tmp_path."""
    from recdemo.app.context import AppContext
    from recdemo.config import Config

    cfg = cfg or Config()
    cfg = cfg.set("llm", "adapter_dir", str(tmp_path / "adapters"))
    # Everything the cleanup pass sweeps lives under tmp_path too: never the shared caches.
    for section, name in (("retrieval", "cache_dir"), ("retrieval", "text_cache_dir"),
                          ("llm", "fusion_cache_dir"), ("app", "gradio_cache_dir")):
        if getattr(getattr(cfg, section), name) == getattr(getattr(Config(), section), name):
            cfg = cfg.set(section, name, str(tmp_path / f"{section}-{name}"))
    service = kw.pop("service", None) or FakeService()
    recs = {}

    def factory(name, folder):
        if name not in recs:
            recs[name] = kw.get("recommender") or FakeRecommender(name)
        return recs[name]

    ctx = AppContext(cfg, service=service, recommender_factory=factory,
                     finetune_runner=kw.pop("finetune_runner", None) or fake_finetune(service),
                     upload_root=str(tmp_path / "uploads"))
    ctx.recs = recs
    if ready:
        ctx.model_ready.set()
    return ctx
