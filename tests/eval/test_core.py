"""The evaluation core: one seeded sampler, users scored (one by one or batched), ranks via the ranker's finish."""
import numpy as np
import pytest

from recdemo.eval.core import final_items, rank_of, ranks, retriever_candidates, sample_cases, score_users
from recdemo.eval.rerank_eval import evaluate_rerank
from recdemo.llm.fusion_store import FusionStore, weight_key
from recdemo.llm.rankers import get_ranker
from recdemo.llm.stack import heuristic_profile_of
from recdemo.metrics import MISS
from recdemo.records import RerankRequest

from conftest import without_latency


def test_sample_is_seeded_sorted_and_shared_by_splits(toy_eval_data):
    ds, _ = toy_eval_data
    a = [c.user for c in sample_cases(ds, "test", 10, seed=1)]
    assert a == [c.user for c in sample_cases(ds, "test", 10, seed=1)] and len(a) == 10
    assert a == sorted(a)
    assert a == [c.user for c in sample_cases(ds, "valid", 10, seed=1)]
    assert a != [c.user for c in sample_cases(ds, "test", 10, seed=2)]
    assert len(sample_cases(ds, "test", None)) == len(ds.eval_cases("test"))
    assert len(sample_cases(ds, "test", 10_000)) == len(ds.eval_cases("test"))
    with pytest.raises(ValueError, match="at least 1"):
        sample_cases(ds, "test", 0)


def test_sample_can_ask_for_long_histories(toy_eval_data):
    ds, _ = toy_eval_data
    lengths = sorted(len(c.history) for c in ds.eval_cases("test"))
    cut = lengths[len(lengths) // 2]
    long = sample_cases(ds, "test", None, min_history=cut)
    assert long and all(len(c.history) >= cut for c in long)
    assert len(long) == sum(n >= cut for n in lengths)
    picked = sample_cases(ds, "test", 3, seed=1, min_history=cut)
    assert len(picked) == min(3, len(long)) and {c.user for c in picked} <= {c.user for c in long}
    assert sample_cases(ds, "test", 3, min_history=lengths[-1] + 1) == []


def test_ranks_come_from_the_rankers_own_finish(toy_eval_data, tiny_llm, tmp_path):
    ds, retriever = toy_eval_data
    FusionStore(tmp_path).save(ds.name, ds.content_hash, weight_key(tiny_llm.name, None, "score"), 0.4)
    ranker = get_ranker("score", tiny_llm, ds, retriever, fuse=True, fusion_dir=str(tmp_path))
    assert ranker.fusion_weight(None)[0] == 0.4
    cases = sample_cases(ds, "test", 5, seed=0)
    users = score_users(ranker, cases, retriever_candidates(retriever, 12), k=4)
    for case, user in zip(cases, users):
        cands = retriever_candidates(retriever, 12)(case)
        want = [r.index for r in ranker.rank(RerankRequest(history=user.history, candidates=cands, profile=None, k=4))]
        assert final_items(user.scored, 0.4, 4) == want  # the weight the ranker looked up
        whole = final_items(user.scored, 0.4, None)
        assert len(whole) == len(user.scored.items) and whole[:4] == want
        r = rank_of(user, 0.4, 4)
        assert r == (want.index(user.target) if user.target in want else MISS)


def test_skip_missing_users_cost_no_model_call(toy_eval_data):
    ds, retriever = toy_eval_data
    calls = []

    class Counting:
        name, catalog = "counting", ds.catalog

        def score_list(self, req):
            calls.append(req)
            from recdemo.llm.rankers.base import Ranker
            out = Ranker.candidate_list(self, req)
            out.llm = -np.arange(len(out.items), dtype=float)
            return out

    cases = ds.eval_cases("test")
    users = score_users(Counting(), cases, retriever_candidates(retriever, 5), skip_missing=True)
    hit = [u for u in users if u.target in u.candidates]
    assert 0 < len(hit) < len(users) and len(calls) == len(hit)
    assert all(r == MISS for u, r in zip(users, ranks(users, 1.0, None)) if u.target not in u.candidates)


@pytest.mark.parametrize("name,select", [("score", False), ("score", True), ("tallrec", True), ("palr", False),
                                         ("genrec", True)])
def test_batched_rerank_evaluation_equals_one_user_at_a_time(toy_eval_data, tiny_llm, tmp_path, name, select):
    ds, retriever = toy_eval_data
    FusionStore(tmp_path).save(ds.name, ds.content_hash, weight_key(tiny_llm.name, None, name), 0.5)
    ranker = get_ranker(name, tiny_llm, ds, retriever, fusion_dir=str(tmp_path))
    kw = dict(split="valid" if select else "test", users=9, seed=1, n_candidates=15, k=5, select=select)
    one = evaluate_rerank(ranker, ds, retriever, batch_size=1, **kw)
    for batch in (4, 9):
        assert without_latency(evaluate_rerank(ranker, ds, retriever, batch_size=batch, **kw)) == without_latency(one)
    # the LLM's own order is compared too (AUC over every candidate), not only SASRec's
    if name != "genrec":
        assert one["auc"] is not None and one["auc"] != one["baseline_auc"]
    # the LLM's own list differs from SASRec's (the lists themselves: on a random tiny model both NDCGs can be 0)
    cases = sample_cases(ds, kw["split"], kw["users"], kw["seed"])
    lists = score_users(ranker, cases, retriever_candidates(retriever, kw["n_candidates"]), heuristic_profile_of, k=5)
    assert any(final_items(u.scored, 1.0, 5) != u.candidates[:5] for u in lists)


def test_unknown_profile_is_refused(toy_eval_data, tiny_llm):
    from recdemo.config import Config
    from recdemo.llm.stack import Stack

    ds, _ = toy_eval_data
    stack = Stack(Config(), dataset=ds, service=tiny_llm)
    assert stack.profile_fn("heuristic")(ds.catalog, [0, 1, 2]).keywords
    with pytest.raises(ValueError, match="heuristic"):
        stack.profile_fn("psychic")
