import numpy as np
import pytest

from recdemo.llm.fusion import fuse, fused_order, gain_p_value, normalize, select_weight


def test_rank_normalization_handles_ties():
    n = normalize([3.0, 1.0, 3.0, 0.0], "rank")
    assert n.max() <= 1.0 and n.min() >= 0.0
    assert n[0] == n[2] > n[1] > n[3]
    assert normalize([5.0], "rank").tolist() == [1.0]


def test_zscore_normalization_survives_minus_infinity():
    n = normalize([2.0, 0.0, -np.inf], "zscore")
    assert np.isfinite(n).all() and n[0] > n[1] > n[2]
    with pytest.raises(ValueError):
        normalize([1.0], "median")


def test_weight_zero_reproduces_sasrec_order_and_one_the_llm_order():
    rng = np.random.default_rng(0)
    sasrec = np.sort(rng.random(20))[::-1].copy()
    sasrec[5] = sasrec[6]  # a tie: list order must be kept
    llm = rng.random(20)
    assert fused_order(sasrec, llm, 0.0).tolist() == list(range(20))
    assert fused_order(sasrec, llm, 1.0).tolist() == np.argsort(-llm, kind="stable").tolist()
    for method in ("rank", "zscore"):
        assert fused_order(sasrec, llm, 0.0, method).tolist() == list(range(20))
    with pytest.raises(ValueError):
        fuse(sasrec, llm, 1.5)


def test_ties_in_the_llm_score_fall_back_to_sasrec():
    sasrec = [4.0, 3.0, 2.0, 1.0]
    llm = [0.0, 0.0, 2.0, 0.0]  # like PALR: one emitted item, the rest unranked
    assert fused_order(sasrec, llm, 1.0).tolist() == [2, 0, 1, 3]


def _lists(llm_sign: float, n_users: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        sasrec = np.sort(rng.random(50))[::-1]
        target = int(rng.integers(0, 50))
        llm = rng.random(50) * 0.1
        llm[target] = llm_sign  # +1: the LLM puts the target first; -1: last
        out.append((sasrec, llm, target))
    return out


def test_selection_picks_zero_for_an_adversarial_llm():
    w, table = select_weight(_lists(-1.0))
    assert w == 0.0
    assert table[0.0] >= max(table.values())


def test_selection_uses_a_helpful_llm_and_never_loses_to_sasrec():
    w, table = select_weight(_lists(+1.0))
    assert w > 0.0 and table[w] > table[0.0]
    with pytest.raises(ValueError):
        select_weight(_lists(1.0), grid=(0.5, 1.0))


def test_a_gain_that_is_only_noise_keeps_the_weight_at_zero():
    # a tiny, random LLM signal: some weight wins on these users by luck, but not significantly
    rng = np.random.default_rng(5)
    lists = [(np.sort(rng.random(50))[::-1], rng.random(50), int(rng.integers(0, 50))) for _ in range(40)]
    w_free, table = select_weight(lists, alpha=None)
    assert w_free > 0 and table[w_free] > table[0.0]  # the unguarded choice chases noise
    assert select_weight(lists)[0] == 0.0
    assert gain_p_value(_lists(+1.0), 1.0) < 0.05  # a real gain passes
