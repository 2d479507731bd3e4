import numpy as np
import pytest

from recdemo.llm.batch_score import rank_batch, score_lists
from recdemo.llm.fusion_store import FusionStore, weight_key
from recdemo.llm.rankers import get_ranker
from recdemo.records import Candidate, RerankRequest

from conftest import make_tiny_adapter


def requests(dataset, retriever, n_users: int = 5) -> list[RerankRequest]:
    """Histories of different lengths (left padding) and candidate lists of different sizes (trees
    of different sizes: right padding), one of them a single candidate (nothing to choose)."""
    out = []
    for u in range(n_users):
        history = [int(x) for x in dataset.sequences[u][:-1]][: 2 + 2 * u]
        n = [20, 7, 1, 14, 3][u % 5]
        top = retriever.top_k(history, n)
        out.append(RerankRequest(history=history, profile=None, k=min(5, n),
                                 candidates=[Candidate(i, s, r) for r, (i, s) in enumerate(top, 1)]))
    return out


def test_batched_scores_equal_one_user_at_a_time(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    ranker = get_ranker("score", tiny_llm, toy_dataset, pop_retriever, fuse=False, fusion_dir=str(tmp_path))
    reqs = requests(toy_dataset, pop_retriever)
    batched = score_lists(ranker, reqs)
    assert len({len(r.history) for r in reqs}) == len(reqs)  # really padded
    for req, got in zip(reqs, batched):
        want = ranker.score_list(req)
        assert got.items == want.items
        assert np.allclose(got.llm, want.llm, atol=1e-4)
        assert got.info["prompt_tokens"] == want.info["prompt_tokens"]
        assert got.info["tree_tokens"] == want.info["tree_tokens"]
    assert batched[2].llm.tolist() == [0.0]  # one candidate: log P = 0 under the constraint
    assert np.ptp(batched[0].llm) > 0.1  # a real spread, not all equal


def test_rank_batch_fuses_like_rank(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    key = weight_key(tiny_llm.name, None, "score")
    FusionStore(tmp_path).save(toy_dataset.name, toy_dataset.content_hash, key, 0.5)
    ranker = get_ranker("score", tiny_llm, toy_dataset, pop_retriever, fuse=True, fusion_dir=str(tmp_path))
    assert ranker.fusion_weight(None)[0] == 0.5  # a real mix of the two orders
    reqs = requests(toy_dataset, pop_retriever, 4)
    for req, got in zip(reqs, rank_batch(ranker, reqs)):
        want = ranker.rank(req)
        assert [o.index for o in got] == [o.index for o in want]
        assert np.allclose([o.score for o in got], [o.score for o in want], atol=1e-6)


def test_batched_scores_run_through_the_active_adapter(tiny_service, toy_dataset, pop_retriever, tmp_path):
    make_tiny_adapter(tiny_service.llm, tmp_path / "adapters" / "toy")
    reqs = requests(toy_dataset, pop_retriever, 3)
    with_adapter = get_ranker("score", tiny_service, toy_dataset, pop_retriever, adapter="toy", fuse=False,
                              fusion_dir=str(tmp_path))
    bare = get_ranker("score", tiny_service, toy_dataset, pop_retriever, adapter=None, fuse=False,
                      fusion_dir=str(tmp_path))
    got = score_lists(with_adapter, reqs)
    for req, g in zip(reqs, got):
        assert np.allclose(g.llm, with_adapter.score_list(req).llm, atol=1e-4)
        assert g.info["adapter"] == "toy"
    assert not np.allclose(got[0].llm, score_lists(bare, reqs)[0].llm, atol=1e-3)  # the LoRA changes scores


def test_a_ranker_without_a_batched_form_is_refused(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    from recdemo.llm.rankers.base import Ranker

    class OneByOne(Ranker):
        name = "one_by_one"

    plain = OneByOne(tiny_llm, toy_dataset, pop_retriever, fusion_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no batched scoring"):
        score_lists(plain, requests(toy_dataset, pop_retriever, 1))
    score = get_ranker("score", tiny_llm, toy_dataset, pop_retriever, fusion_dir=str(tmp_path))
    assert score_lists(score, []) == []
