"""Recommender: titles -> retrieval -> profile -> ranker -> explanations, and the recommend CLI."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from conftest import PopularityRetriever, queue_while_busy, real_data_root

from recdemo.config import Config
from recdemo.cli.recommend import cli_recommend
from recdemo.llm.claims import short_title
from recdemo.llm.profile import item_terms, keyword_terms
from recdemo.pipeline.personas import build_personas
from recdemo.pipeline.recommender import Recommender
from recdemo.records import RankedItem


class ReverseRanker:
    """A minimal ranker: the candidates in reverse SASRec order (so moves are easy to predict).
    Asserts it runs with the model lock held."""

    def __init__(self, service):
        self.service, self.seen = service, []

    def rank(self, req):
        assert self.service.lock._is_owned()  # the pipeline holds the lock around the ranker
        self.seen.append(req)
        picked = list(reversed(req.candidates))[: req.k]
        return [RankedItem(c.index, llm_score=-float(n), score=-float(n), retrieval_rank=c.rank)
                for n, c in enumerate(picked)]

    def prompt(self, req):
        return f"REVERSE PROMPT for {len(req.candidates)} candidates"


class LockCheckingRetriever(PopularityRetriever):
    def __init__(self, dataset, service):
        super().__init__(dataset)
        self.service, self.calls = service, 0
        self.item_embeddings = np.random.default_rng(0).normal(size=(dataset.n_items, 8)).astype(np.float32)

    def method_for(self, history):
        return "sasrec"

    def top_k(self, history, k=50):
        assert not self.service.lock._is_owned()  # retrieval stays outside the model lock
        self.calls += 1
        return super().top_k(history, k)


@pytest.fixture
def rec(toy_dataset, tiny_service, tmp_path):
    cfg = Config()
    cfg = cfg.set("llm", "adapter_dir", str(tmp_path / "adapters"))
    cfg = cfg.set("retrieval", "text_cache_dir", str(tmp_path / "text"))
    r = Recommender(toy_dataset, cfg, service=tiny_service,
                    retriever=LockCheckingRetriever(toy_dataset, tiny_service))
    r.stack._text_index_failed = True  # no sentence encoder in unit tests: search falls back to trigrams
    r.stack._rankers["reverse"] = ReverseRanker(tiny_service)
    r.profiles.keyword_tokens = r.profiles.summary_tokens = 6
    r.explainer.max_new_tokens = 6
    return r


def test_recommend_end_to_end_with_a_minimal_ranker(rec, toy_dataset):
    cat = toy_dataset.catalog
    history = [cat.titles[i] for i in toy_dataset.sequences[0][:6]]
    out = rec.recommend(history, ranker="reverse", n_candidates=12, k=5)
    hist_idx = [cat.find_title(t) for t in history]
    assert [h["index"] for h in out.history] == hist_idx
    assert len(out.candidates) == 12 and [c["rank"] for c in out.candidates] == list(range(1, 13))
    cand_idx = [c["index"] for c in out.candidates]
    assert not set(cand_idx) & set(hist_idx)
    assert len(out.results) == 5
    assert [r["index"] for r in out.results] == list(reversed(cand_idx))[:5]
    for rank, r in enumerate(out.results, 1):
        assert r["rank"] == rank and r["index"] in cand_idx
        assert r["retrieval_rank"] == cand_idx.index(r["index"]) + 1
        assert r["move"] == r["retrieval_rank"] - rank  # e.g. SASRec #12 -> 1st: +11
        assert r["evidence"] and all(e["history_index"] in hist_idx for e in r["evidence"])
        # each card carries its own item's explanation (not a neighbour's): its evidence, a sentence naming it
        assert r["evidence"] == rec.explainer.evidence(hist_idx, r["index"])
        assert f'"{short_title(r["title"])}"' in r["rationale"]
        # the tiny random model writes gibberish: each card says its sentence was replaced, and why
        assert r["rationale_source"] != "template" or (r["failed_checks"] or r["repair"])
    assert out.results[0]["move"] == 11
    assert out.profile is not None and sum(k.grounded for k in out.profile.keywords) >= 2
    assert "profile prompt" in out.prompt and "REVERSE PROMPT for 12 candidates" in out.prompt
    assert out.profile.prompt in out.prompt
    assert set(out.timings) == {"retrieval", "profile", "rerank", "explain", "total"}
    assert out.model == "tiny-llama on cpu (float32)" and out.adapter is None and out.ranker == "reverse"
    data = json.loads(json.dumps(out.to_dict()))  # JSON-friendly
    assert data["results"][0]["title"] == cat.titles[out.results[0]["index"]]


def test_unknown_title_suggests_close_ones(rec, toy_dataset):
    title = toy_dataset.catalog.titles[3]
    with pytest.raises(ValueError, match=r"Unknown title 'Alpha Alpah Story'\. Did you mean: .*Alpha Alpha Story"):
        rec.recommend([title, "Alpha Alpah Story"], ranker="reverse")


def test_every_unknown_title_is_reported_at_once(rec, toy_dataset):
    title = toy_dataset.catalog.titles[3]
    with pytest.raises(ValueError) as e:
        rec.recommend(["Alpha Alpah Story", title, "Bravo Brovo Story", "Alpha Alpah Story"], ranker="reverse")
    msg = str(e.value)
    assert msg.count("Unknown title") == 2 and msg.index("'Alpha Alpah Story'") < msg.index("'Bravo Brovo Story'")
    assert repr(title) not in msg.split("Did you mean")[0]


def test_a_huge_title_is_refused_at_once_and_never_repeated(rec, toy_dataset, monkeypatch):
    """Issue 18: a 100,000-character title took seconds of fuzzy matching and came back in the error."""
    find = rec.catalog.find_title
    monkeypatch.setattr(rec.catalog, "find_title",
                        lambda t: pytest.fail("a huge title must not be matched") if len(t) > 10_000 else find(t))
    with pytest.raises(ValueError, match="limits.max_field_chars") as e:
        rec.recommend([toy_dataset.catalog.titles[3], "x" * 100_000], ranker="reverse")
    assert len(str(e.value)) < 200
    long_unknown = "Alpha " * 30  # within the field limit, unknown: named, but shortened
    monkeypatch.undo()
    with pytest.raises(ValueError, match="Unknown title") as e:
        rec.recommend([long_unknown], ranker="reverse")
    assert long_unknown.strip() not in str(e.value) and "…" in str(e.value)


def test_empty_history_and_bad_sizes_are_friendly_errors(rec, toy_dataset):
    with pytest.raises(ValueError, match="history is empty"):
        rec.recommend([], ranker="reverse")
    with pytest.raises(ValueError, match="history is empty"):
        rec.recommend(["  "], ranker="reverse")
    with pytest.raises(ValueError, match="Cannot pick 20 results from 10 candidates"):
        rec.recommend([toy_dataset.catalog.titles[0]], ranker="reverse", n_candidates=10, k=20)
    with pytest.raises(ValueError, match="not in the catalog"):
        rec.recommend([10_000], ranker="reverse")
    with pytest.raises(ValueError, match="Unknown ranker 'bm25': choose one of palr, score, tallrec, genrec"):
        rec.recommend([toy_dataset.catalog.titles[0]], ranker="bm25")


class NoModelWork:
    """Stands in for every stage with model work: any call fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"model work ({name}) before the request sizes were checked")


@pytest.mark.parametrize("sizes,limit", [
    ({"k": 100_000}, "limits.max_results"),
    ({"n_candidates": 100_000}, "limits.max_candidates"),
    ({"k": 100_000, "n_candidates": 100_000}, "limits.max_"),
    ({"k": 0}, "results must be at least 1"),
    ({"n_candidates": -1}, "candidates must be at least 1"),
])
def test_oversized_requests_are_refused_before_any_model_work(rec, toy_dataset, sizes, limit):
    """Issue 18: k and n_candidates were unbounded on the API path and a huge request OOM-killed
    the server. Now the limit is named in one sentence, and nothing ran first."""
    rec._retriever = rec._profiles = rec._explainer = NoModelWork()
    rec.stack._rankers["reverse"] = NoModelWork()
    history = [toy_dataset.catalog.titles[i] for i in (0, 1, 2)]
    with pytest.raises(ValueError, match=limit) as e:
        rec.recommend(history, ranker="reverse", **sizes)
    message = str(e.value)
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    if "above" in message:
        assert "RECDEMO_MAX_" in message  # ... that says how to change the limit


def test_history_longer_than_the_limit_is_refused(rec, toy_dataset):
    rec._retriever = NoModelWork()
    limit = rec.cfg.limits.max_history
    history = [i % toy_dataset.n_items for i in range(limit + 1)]
    with pytest.raises(ValueError, match=f"{limit + 1} history items is above this server's limit of {limit} "
                                         r"\(limits.max_history; set RECDEMO_MAX_HISTORY"):
        rec.recommend(history, ranker="reverse")


def test_sizes_at_the_limits_pass(rec, toy_dataset):
    from dataclasses import replace

    limits = replace(rec.cfg.limits, max_results=4, max_candidates=6, max_history=5)
    rec.cfg = replace(rec.cfg, limits=limits)
    history = [toy_dataset.catalog.titles[i] for i in toy_dataset.sequences[0][:5]]
    out = rec.recommend(history, ranker="reverse", n_candidates=6, k=4, with_explanations=False)
    assert len(out.candidates) == 6 and len(out.results) == 4
    for too_many in ({"n_candidates": 7, "k": 4}, {"n_candidates": 6, "k": 5}):
        with pytest.raises(ValueError, match="above this server's limit"):
            rec.recommend(history, ranker="reverse", with_explanations=False, **too_many)
    with pytest.raises(ValueError, match="6 history items"):
        rec.recommend(history + [toy_dataset.catalog.titles[7]], ranker="reverse", n_candidates=6, k=4)


def test_a_bad_default_ranker_fails_at_construction(toy_dataset, tiny_service):
    with pytest.raises(ValueError, match="Unknown ranker 'bm25'"):
        Recommender(toy_dataset, Config().set("llm", "ranker", "bm25"), service=tiny_service)


def test_history_accepts_indices_and_keeps_the_latest_repeat(rec, toy_dataset):
    t = toy_dataset.catalog.titles
    assert rec.resolve([1, t[2], t[1].upper(), 3]) == [2, 1, 3]


def test_without_profile_and_explanations(rec, toy_dataset):
    out = rec.recommend([0, 1, 2], ranker="reverse", n_candidates=8, k=3, with_profile=False,
                        with_explanations=False)
    assert out.profile is None and len(out.results) == 3
    assert all(r["evidence"] == [] and r["rationale"] == "" for r in out.results)
    assert out.prompt.startswith("===== reverse ranker prompt")


def test_short_ranker_output_is_topped_up_with_a_warning(rec):
    class Short(ReverseRanker):
        def rank(self, req):
            return super().rank(req)[:1] + [RankedItem(req.history[0], 0.0, 0.0, None)]  # a history item!

    rec.stack._rankers["short"] = Short(rec.service)
    out = rec.recommend([0, 1, 2], ranker="short", n_candidates=8, k=4, with_explanations=False)
    assert len(out.results) == 4 and 0 not in [r["index"] for r in out.results]
    assert any("fewer than asked" in w for w in out.warnings)


def test_retrieval_failure_falls_back_to_text_similarity(rec, toy_dataset):
    class Broken:
        def method_for(self, history):
            raise RuntimeError("no checkpoint")

    class FakeText:
        def similar(self, history, k):
            return [(i, 1.0 - i / 100) for i in range(toy_dataset.n_items) if i not in history][:k]

    rec.stack._retriever, rec.stack._text_index, rec.stack._text_index_failed = Broken(), FakeText(), False
    rec._explainer = None
    out = rec.recommend([0, 1], ranker="reverse", n_candidates=6, k=3, with_explanations=False)
    assert [c["index"] for c in out.candidates] == [2, 3, 4, 5, 6, 7]
    assert any("text similarity" in w for w in out.warnings)


def test_adapter_auto_and_explicit(rec, tmp_path, toy_dataset):
    from conftest import make_tiny_adapter

    assert rec.recommend([0], ranker="reverse", n_candidates=5, k=2, with_profile=False,
                         with_explanations=False).adapter is None
    make_tiny_adapter(rec.service.llm, tmp_path / "adapters" / toy_dataset.name)
    seen = []

    class Spy(ReverseRanker):
        def rank(self, req):
            seen.append(self.service.adapters.active)
            return super().rank(req)

    rec.stack._rankers["spy"] = Spy(rec.service)
    out = rec.recommend([0], ranker="spy", n_candidates=5, k=2, with_profile=False, with_explanations=False)
    assert out.adapter == "toy" and seen == ["toy"]  # "auto" = the adapter named like the dataset
    out = rec.recommend([0], ranker="spy", n_candidates=5, k=2, adapter=None, with_profile=False,
                        with_explanations=False)
    assert out.adapter is None and seen[-1] is None
    assert rec.service.adapters.active is None  # restored after the call
    make_tiny_adapter(rec.service.llm, tmp_path / "adapters" / f"{toy_dataset.name}-spy", seed=2)
    out = rec.recommend([0], ranker="spy", n_candidates=5, k=2, with_profile=False, with_explanations=False)
    assert out.adapter == "toy-spy" and seen[-1] == "toy-spy"  # "auto" prefers the one trained for the ranker


def test_auto_adapter_for_another_base_falls_back_with_a_warning(rec, tmp_path, toy_dataset):
    from conftest import make_tiny_adapter

    from recdemo.errors import ModelNotFound

    make_tiny_adapter(rec.service.llm, tmp_path / "adapters" / toy_dataset.name, base_model="other-model")
    out = rec.recommend([0], ranker="reverse", n_candidates=5, k=2, with_profile=False, with_explanations=False)
    assert out.adapter is None and any("other-model" in w for w in out.warnings)
    with pytest.raises(ModelNotFound, match="other-model"):  # asked for by name: an error, not a fallback
        rec.recommend([0], ranker="reverse", n_candidates=5, k=2, adapter=toy_dataset.name)


def test_concurrent_calls_give_the_same_answers(rec):
    histories = [[0, 1, 2], [5, 6], [10, 11, 12, 13]]
    expected = [rec.recommend(h, ranker="reverse", n_candidates=8, k=3).to_dict()["results"] for h in histories]
    got, errors = [None] * 3, []

    def run(i):
        try:
            got[i] = rec.recommend(histories[i], ranker="reverse", n_candidates=8, k=3).to_dict()["results"]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and got == expected


@pytest.mark.parametrize("ranker", ["score", "tallrec", "palr", "genrec"])
def test_concurrent_reranks_share_one_batched_scoring_call(rec, ranker):
    """Requests that wait while the model is busy are reranked together (batch_score.rank_batch):
    one batch for three users, each user's order the one it gets alone."""
    histories = [[0, 1, 2], [5, 6], [10, 11, 12, 13, 14]]  # prompts of different lengths: padded
    kw = dict(ranker=ranker, n_candidates=8, k=4, with_profile=False, with_explanations=False)
    alone = [rec.recommend(h, **kw).to_dict()["results"] for h in histories]
    assert rec._reranks.batches == 3  # one at a time: a batch of one each (exactly the old path)
    got = [None] * 3

    def run(i):
        got[i] = rec.recommend(histories[i], **kw).to_dict()["results"]

    queue_while_busy(rec.service.lock, rec._reranks, [lambda i=i: run(i) for i in range(3)])
    assert rec._reranks.batches == 4 and rec._reranks.jobs == 6  # the three in one batch
    for want, have in zip(alone, got):
        assert [r["index"] for r in have] == [r["index"] for r in want]
        assert np.allclose([r["llm_score"] for r in have], [r["llm_score"] for r in want], atol=2e-4)
        assert np.allclose([r["score"] for r in have], [r["score"] for r in want], atol=2e-4)
    assert len({tuple(r["index"] for r in have) for have in got}) > 1  # different users, different lists


def test_a_request_still_reranking_shares_the_explanation_call_of_one_that_is_done(rec, monkeypatch):
    """Holding a room: each request takes a ticket before its rerank, so the explanation call of a
    request that is done reranking waits (briefly) for the other's rows instead of running alone;
    requests that arrived together stay in one batch, each with the answer it gets alone."""
    histories = [[0, 1, 2], [5, 6, 7]]
    kw = dict(ranker="reverse", n_candidates=8, k=3, with_profile=False)
    alone = [rec.recommend(h, **kw).to_dict()["results"] for h in histories]
    rerank, second_started = rec._rerank_stage, threading.Event()

    def slow_for_the_second(run):
        if run.hist[0] == 5:
            second_started.set()
            time.sleep(0.5)  # still reranking when the first request's explanations are ready
        else:  # a thread started late would take its ticket after the first request's call began
            second_started.wait(10)
        rerank(run)

    monkeypatch.setattr(rec, "_rerank_stage", slow_for_the_second)
    rec.explainer.forget()  # written again, not taken from the cache
    before, got = rec.service.generations.batches, [None, None]

    def run(i):
        got[i] = rec.recommend(histories[i], **kw).to_dict()["results"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == alone
    assert rec.service.generations.batches - before == 1  # both requests' explanations in one call
    assert not rec.service.generations._open  # every ticket closed


def test_search_random_user_and_personas(rec, toy_dataset):
    cat = toy_dataset.catalog
    hits = rec.search_titles("alpha bravo", k=3)
    assert hits[0]["title"].startswith("Alpha Bravo") and set(hits[0]) >= {"index", "title", "score"}
    h1, h2 = rec.random_user_history(seed=3, max_items=5), rec.random_user_history(seed=3, max_items=5)
    assert h1 == h2 and 1 <= len(h1) <= 5
    idx = [cat.find_title(t) for t in h1]
    assert any(list(s[-len(idx):]) == idx for s in toy_dataset.train_sequences())  # a real user's training tail
    personas = rec.personas()
    assert personas and all(name.endswith(" fan") for name in personas)
    for name, titles in personas.items():
        genre = name[: -len(" fan")]
        assert titles and all(genre in cat.attributes[cat.find_title(t)] for t in titles)


def test_personas_without_attributes_use_title_words():
    from recdemo.data import Catalog, Dataset

    titles = [f"{w} Shampoo {i}" for i, w in enumerate(["Argan", "Silk", "Mint", "Rose"] * 3)] + \
             [f"Nail Polish {c}" for c in "ABCDEFGHIJKL"] + [f"Thing {i}" for i in range(30)]
    cat = Catalog(ids=[str(i) for i in range(len(titles))], titles=titles)
    seqs = [np.array([i, i + 1, i + 2]) for i in range(0, len(titles) - 3)]
    data = Dataset(name="shop", catalog=cat, users=[str(i) for i in range(len(seqs))], sequences=seqs)
    personas = build_personas(data, n=5, size=4)
    assert "Shampoo shopper" in personas and "Polish shopper" in personas
    assert all("Shampoo" in t for t in personas["Shampoo shopper"])


def cli_config(rec, candidates: int, top: int) -> Config:
    """The config the recommend command hands its handler: --ranker/--candidates/--top applied."""
    return rec.cfg.set("llm", "ranker", "reverse").set("retrieval", "n_candidates", candidates) \
        .set("llm", "n_results", top)


def test_cli_unknown_title_exits_2(rec, monkeypatch, capsys):
    import argparse

    monkeypatch.setattr(Recommender, "from_config", classmethod(lambda cls, cfg, **kw: rec))
    args = argparse.Namespace(history=["No Such Film"], json=False)
    assert cli_recommend(args, cli_config(rec, candidates=8, top=3)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown title 'No Such Film'") and "Traceback" not in err


def test_cli_text_and_json(rec, monkeypatch, capsys, toy_dataset):
    import argparse

    monkeypatch.setattr(Recommender, "from_config", classmethod(lambda cls, cfg, **kw: rec))
    titles = [toy_dataset.catalog.titles[i] for i in (0, 1, 2)]
    args = argparse.Namespace(history=titles, json=False)
    cfg = cli_config(rec, candidates=12, top=3)
    assert cli_recommend(args, cfg) == 0
    text = capsys.readouterr().out
    assert "PROFILE:" in text and "SASREC CANDIDATES (top 10 of 12)" in text and "TOP 3 (reverse)" in text
    assert "SASRec #12, up 11" in text
    args.json = True
    assert cli_recommend(args, cfg) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["candidates"]) == 12 and len(data["results"]) == 3
    assert data["profile"]["keywords"] and "support" in data["profile"]["keywords"][0]


@pytest.mark.integration
def test_smollm2_movielens_recommend_end_to_end():
    """Real data, real SmolLM2, the real score ranker; item-kNN stands in for SASRec's retriever
    so the test does not depend on a trained checkpoint."""
    from recdemo.data import load_dataset
    from recdemo.llm.claims import RationaleChecker
    from recdemo.llm.service import LLMService
    from recdemo.retrieval.baselines import ItemKNN

    class KNNRetriever:
        def __init__(self, data):
            self.knn = ItemKNN.for_dataset(data)

        def method_for(self, history):
            return "sasrec"

        def top_k(self, history, k=50):
            s = self.knn.score_all(history)
            s[list(history)] = -np.inf
            top = np.argsort(-s, kind="stable")[:k]
            return [(int(i), float(s[i])) for i in top]

    cfg = Config.from_env()
    data = load_dataset("movielens-small", root=real_data_root())
    rec = Recommender(data, cfg, service=LLMService(cfg.llm), retriever=KNNRetriever(data))
    history = ["Toy Story (1995)", "Aladdin (1992)", "Lion King, The (1994)", "Shrek (2001)", "Finding Nemo (2003)"]
    out = rec.recommend(history, ranker="score", n_candidates=20, k=10, adapter=None)
    hist_idx = [h["index"] for h in out.history]
    cand_idx = {c["index"] for c in out.candidates}
    assert len(out.results) == 10 and {r["index"] for r in out.results} <= cand_idx
    assert sum(k.grounded for k in out.profile.keywords) >= 2
    cat = data.catalog
    for r in out.results:
        assert r["evidence"] and all(e["history_index"] in hist_idx for e in r["evidence"])
        chk = RationaleChecker([cat.titles[i] for i in hist_idx] + [r["title"]],
                               {a for i in hist_idx + [r["index"]] for a in cat.attributes[i]})
        assert r["rationale"] and chk.problems(r["rationale"]) == []


# -- streaming (issue 17): the stages in order, the last one is recommend's answer --
def test_stages_come_in_order_and_the_last_is_recommends_answer(rec, toy_dataset, monkeypatch):
    """A ranker whose prompt has no profile (score, this one): rerank first, then the explanations (the
    profile's keyword line and summary share their decoder call), each card as its row finishes, then the
    profile."""
    import recdemo.llm.explain as explain

    monkeypatch.setattr(explain, "sentence_done", lambda text: len(text) > 8)  # rows end at different steps
    rec.explainer.max_new_tokens = 12
    history = [toy_dataset.catalog.titles[i] for i in toy_dataset.sequences[0][:6]]
    calls = []
    inner = rec.service.decoder.generate
    rec.service.decoder.generate = lambda llm, rows, *a, **kw: calls.append(len(rows)) or inner(llm, rows, *a, **kw)
    states = list(rec.recommend_stages(history, ranker="reverse", n_candidates=12, k=5))
    names = [s.stage for s in states]
    assert names[:2] == ["retrieval", "rerank"] and names[-2:] == ["profile", "done"]
    assert set(names[2:-2]) == {"explain"} and len(names) - 4 >= 2  # several explain states
    assert calls == [7]  # 5 explanation rows + the profile's keyword line and summary: one call
    first, reranked = states[:2]
    cand_idx = [c["index"] for c in first.candidates]
    # provisional: SASRec's own top-k, nothing from the model yet
    assert [r["index"] for r in first.results] == cand_idx[:5] and all(r["move"] == 0 for r in first.results)
    assert first.profile is None and first.prompt == "" and set(first.timings) == {"retrieval"}
    assert [r["index"] for r in reranked.results] == list(reversed(cand_idx))[:5]
    assert all(r["rationale"] == "" for r in reranked.results) and "REVERSE PROMPT" in reranked.prompt
    explained = [sum(bool(r["rationale"]) for r in s.results) for s in states[2:]]
    assert explained == sorted(explained) and len(set(explained[:-2])) == len(explained) - 2  # growing
    assert explained[0] < 5 and explained[-3:] == [5, 5, 5]
    assert all(s.profile is None for s in states[:-2]) and states[-2].profile is not None
    final = rec.recommend(history, ranker="reverse", n_candidates=12, k=5)
    strip = lambda d: {k: v for k, v in d.items() if k != "timings"}  # noqa: E731
    assert strip(states[-1].to_dict()) == strip(final.to_dict())
    assert set(states[-1].timings) == {"retrieval", "profile", "rerank", "explain", "total"}


class ProfileReadingRanker(ReverseRanker):
    """A ranker whose prompt shows the profile (as palr's does): the profile must come first."""

    def prompt(self, req):
        return super().prompt(req) + (f" for {req.profile.summary}" if req.profile else "")


def test_a_ranker_that_reads_the_profile_gets_it_first(rec, toy_dataset):
    rec.stack._rankers["reads"] = reads = ProfileReadingRanker(rec.service)
    history = [toy_dataset.catalog.titles[i] for i in toy_dataset.sequences[0][:6]]
    states = list(rec.recommend_stages(history, ranker="reads", n_candidates=12, k=5, explain_group=2))
    assert [s.stage for s in states][:3] == ["retrieval", "profile", "rerank"]
    assert reads.seen[-1].profile is states[1].profile is not None
    explained = [sum(bool(r["rationale"]) for r in s.results) for s in states[3:-1]]
    assert explained == sorted(explained) and explained[-1] == 5 and states[-1].stage == "done"
    assert len(explained) >= 3  # at least one state per group of 2 rows (explain_group caps a call)


def test_the_first_state_does_not_wait_for_the_model(rec, toy_dataset):
    """While another request holds the model, SASRec's list still comes at once."""
    held, release, got = threading.Event(), threading.Event(), []

    def hold():
        with rec.service.lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    stages = rec.recommend_stages([0, 1, 2], ranker="reverse", n_candidates=8, k=3)
    reader = threading.Thread(target=lambda: got.append(next(stages)))
    reader.start()
    reader.join(10)
    try:
        assert got and got[0].stage == "retrieval" and len(got[0].results) == 3
    finally:
        release.set()
        holder.join()
    assert [s.stage for s in stages][-1] == "done"  # the rest runs once the model is free


def test_errors_come_before_any_state(rec):
    stages = rec.recommend_stages(["No Such Film"], ranker="reverse")
    with pytest.raises(ValueError, match="Unknown title"):
        next(stages)


# -- steering --
class SpyRanker(ReverseRanker):
    """SASRec's order, unchanged; remembers the profile it was sent."""

    def rank(self, req):
        self.seen.append(req)
        return [RankedItem(c.index, llm_score=-float(c.rank), score=-float(c.rank), retrieval_rank=c.rank)
                for c in req.candidates[: req.k]]


@pytest.fixture
def spy(rec):
    s = SpyRanker(rec.service)
    rec.stack._rankers["spy"] = s
    return s


def test_the_edited_profile_is_what_the_ranker_gets(rec, spy, toy_dataset):
    history = list(toy_dataset.sequences[0][:6])
    base = rec.recommend(history, ranker="spy", n_candidates=12, k=4, with_explanations=False)
    kept = [k.text for k in base.profile.keywords if k.grounded][:1]
    edit = {"keywords": kept + ["Haunted houses"], "summary": "Likes haunted houses. Not much else."}
    out = rec.recommend(history, ranker="spy", n_candidates=12, k=4, with_explanations=False, profile_edit=edit)
    sent = spy.seen[-1].profile
    assert [k.text for k in sent.keywords] == kept + ["Haunted houses"]
    assert sent.summary == "Likes haunted houses. Not much else."
    assert sent.keywords[-1].source == "user" and sent.keywords[-1].grounded  # the user's word reaches the prompt
    assert out.profile.keywords == sent.keywords and base.profile.summary != sent.summary
    assert spy.seen[-2].profile.summary == base.profile.summary  # the unedited run sent the LLM's


def test_an_added_keyword_moves_matching_items_up_and_says_why(rec, spy, toy_dataset):
    cat = toy_dataset.catalog
    history = list(toy_dataset.sequences[0][:6])
    base = rec.recommend(history, ranker="spy", n_candidates=20, k=4, with_explanations=False)
    top = [r["index"] for r in base.results]
    # a word (genre or title word) of a candidate just below the top k that no top-k item has
    word = next(w for c in base.candidates[4:8] for w in [*cat.attributes[c["index"]], *cat.titles[c["index"]].split()]
                if keyword_terms(w) and not any(keyword_terms(w) & item_terms(cat, i) for i in top))
    edit = {"keywords": [k.text for k in base.profile.keywords] + [word]}
    out = rec.recommend(history, ranker="spy", n_candidates=20, k=4, with_explanations=False, profile_edit=edit)
    assert spy.seen[-1].k == 8  # the ranker's top 2k, so the edit can pull items in
    lifted = [r for r in out.results if "steer" in r]
    assert lifted and all(keyword_terms(word) & item_terms(cat, r["index"]) for r in lifted)
    assert all(r["steer"] == {"lift": 1, "added": [word], "removed": []} for r in lifted)
    assert out.results[0]["index"] not in top and out.results[0]["steer"]["lift"] == 1
    assert "steer" not in base.results[0]  # an unsteered answer keeps its shape


def test_not_interested_refills_the_top_k_from_the_candidates(rec, spy, toy_dataset):
    history = list(toy_dataset.sequences[0][:6])
    before = rec.recommend(history, ranker="spy", n_candidates=10, k=4, with_explanations=False)
    gone = before.results[1]["index"]
    after = rec.recommend(history, ranker="spy", n_candidates=10, k=4, with_explanations=False, exclude=[gone])
    expected = [r["index"] for r in before.results if r["index"] != gone] + [before.candidates[4]["index"]]
    assert [r["index"] for r in after.results] == expected
    assert gone not in [c["index"] for c in after.candidates] and len(after.candidates) == 10
    assert gone not in [c.index for c in spy.seen[-1].candidates]
    # every other candidate keeps its SASRec rank (the list has a gap where the item was)
    ranks = {c["index"]: c["rank"] for c in before.candidates}
    assert all(ranks.get(c["index"], c["rank"]) == c["rank"] for c in after.candidates)
    with pytest.raises(ValueError, match="not in the catalog"):
        rec.recommend(history, ranker="spy", exclude=[10_000])


def test_a_rerun_explains_only_the_cards_it_has_not_explained(rec, spy, toy_dataset):
    history = list(toy_dataset.sequences[0][:6])
    asked, plan = [], rec.explainer.plan

    def counting(requests, *a, **kw):
        made = plan(requests, *a, **kw)
        asked.append([made.rows[row][1] for row in made.todo])  # the items whose rows go to the model
        return made

    rec.explainer.plan = counting
    before = rec.recommend(history, ranker="spy", n_candidates=10, k=4)
    gone = before.results[0]["index"]
    after = rec.recommend(history, ranker="spy", n_candidates=10, k=4, exclude=[gone])
    new = [r["index"] for r in after.results if r["index"] not in {b["index"] for b in before.results}]
    assert asked[-1] == new and len(new) == 1  # the three kept cards came from the cache
    kept = {b["index"]: b for b in before.results}
    assert all(r["rationale"] == kept[r["index"]]["rationale"] for r in after.results if r["index"] in kept)
    rec.explainer.forget()
    rec.recommend(history, ranker="spy", n_candidates=10, k=4)  # an empty cache: explained afresh
    assert len(asked[-1]) == 4


def test_a_huge_profile_edit_is_refused_before_any_model_work(rec, toy_dataset):
    title = toy_dataset.catalog.titles[3]
    with pytest.raises(ValueError, match="limits.max_field_chars"):
        rec.recommend([title], ranker="reverse", profile_edit={"keywords": ["k" * 3000], "summary": ""})
    with pytest.raises(ValueError, match="characters in the profile sentence"):
        rec.recommend([title], ranker="reverse", profile_edit={"keywords": [], "summary": "x" * 5000})


def test_a_failing_shared_call_falls_back_for_the_cards_and_still_writes_the_profile(rec, toy_dataset):
    """The explanations' call (with the profile's keyword line in it) fails: templated cards with a
    warning; the profile is then written alone."""
    inner = rec.service.decoder.generate

    def fails_when_shared(llm, rows, *a, **kw):
        if len(rows) > 1:
            raise RuntimeError("out of memory")
        return inner(llm, rows, *a, **kw)

    rec.service.decoder.generate = fails_when_shared
    history = [toy_dataset.catalog.titles[i] for i in toy_dataset.sequences[1][:5]]
    states = list(rec.recommend_stages(history, ranker="reverse", n_candidates=10, k=4))
    assert [s.stage for s in states] == ["retrieval", "rerank", "explain", "profile", "done"]
    out = states[-1]
    assert all(r["rationale_source"] == "template" and r["rationale"] for r in out.results)
    assert any("LLM explanations failed (RuntimeError)" in w for w in out.warnings)
    assert out.profile is not None and out.profile.raw and not any("profile failed" in w for w in out.warnings)
