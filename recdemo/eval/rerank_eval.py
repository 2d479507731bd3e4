"""Rerank-stage evaluation: SASRec's top-k vs an LLM ranker's top-k from SASRec's top-N.

``python -m recdemo evaluate --stage rerank --ranker palr|score|tallrec|genrec [--split valid]``

Protocol (leave-one-out, full ranking): for each user of a seeded random sample (``--users N``,
``--seed``; the same users for every ranker, and the same users on both splits), SASRec retrieves
its top-N from the whole catalog (history excluded), the ranker reorders them (genrec generates
from the whole catalog instead) and the final list is cut at k. The target's position in that
final list is its rank; a target outside the list is a miss (NDCG 0), so a target SASRec failed to
retrieve counts against the LLM too. ``baseline_*`` is SASRec's own top-k on the same users.

The LLM runs once per user; every fusion weight of ``fusion.GRID`` is then applied to the stored
scores. ``--split valid`` picks the weight with the best NDCG@10 (ties: the smaller weight; the grid
holds 0 = SASRec, so on those users fusion never loses to SASRec; a weight above 0 must also pass
a paired bootstrap test against SASRec, ``fusion.select_weight``) and saves it for this
dataset/model/adapter/ranker, with the score normalisation (``rank`` or ``zscore``, whichever scores
better there); ``--split test`` applies the saved weight; ``--no-fuse`` the LLM alone.

Also reported: ``valid_ratio`` (returned items that are distinct and valid - in the candidate list,
or for genrec in the catalog and not in the history - over all returned items, counted on the
outputs), ``auc`` (for rankers that score every candidate: the target against the other candidates,
by the LLM's own score, over users whose target was retrieved; ``baseline_auc`` the same with
SASRec's scores), latency percentiles of the ranker's LLM call per user (``score_list``; fusion adds
microseconds), ``candidate_recall`` (targets inside SASRec's top-N: the ceiling of any reranker),
``lift_ci95`` (paired bootstrap over users of the reported list's NDCG@k over SASRec's) and
``ndcg@k_ci95`` (bootstrap of the reported NDCG@k itself): on a few hundred users both are wide.
Profiles are the heuristic profile (``llm.profile.heuristic_profile``), as in fine-tuning examples.
"""
from __future__ import annotations

import time

import numpy as np

from recdemo.llm.fusion import GRID, METHODS, fused_order, gain_p_value, select_weight
from recdemo.records import Candidate, RerankRequest
from recdemo.metrics import MISS, mean_interval, metrics_from_ranks, ratio_interval


def sample_cases(dataset, split: str, users: int | None, seed: int = 0) -> list:
    """A seeded random sample of evaluation cases (all when ``users`` is None or too large)."""
    cases = dataset.eval_cases(split)
    if users is None or users >= len(cases):
        return cases
    if users < 1:
        raise ValueError("--users must be at least 1")
    pick = np.random.default_rng(seed).choice(len(cases), size=users, replace=False)
    return [cases[i] for i in sorted(pick)]


def default_profile(catalog, history):
    try:
        from recdemo.llm.profile import heuristic_profile
    except ImportError:  # the profile module is optional here: prompts then say "(no profile)"
        return None
    return heuristic_profile(catalog, list(history))


def evaluate_rerank(ranker, dataset, retriever, split: str = "test", users: int | None = None, seed: int = 0,
                    n_candidates: int = 50, k: int = 10, weight: float | None = None, select: bool = False,
                    profile_fn=default_profile, progress=None) -> dict:
    """Metrics dict (see the module doc). ``weight``: fusion weight for the reported list (None: the
    ranker's stored weight); ``select``: choose the weight on these users instead (validation)."""
    cases = sample_cases(dataset, split, users, seed)
    if not cases:
        raise ValueError(f"the {split} split has no users with three or more interactions")
    lists, latency, base_ranks, retrieved, adapter = [], [], [], 0, None
    for n, case in enumerate(cases, 1):
        history = [int(x) for x in case.history]
        top = retriever.top_k(history, n_candidates)
        cands = [Candidate(index=int(i), score=float(s), rank=r) for r, (i, s) in enumerate(top, 1)]
        pos = [c.index for c in cands]
        base_ranks.append(pos.index(case.target) if case.target in pos[:k] else MISS)
        retrieved += case.target in pos
        req = RerankRequest(history=history, candidates=cands, profile=profile_fn(dataset.catalog, history), k=k)
        start = time.perf_counter()
        scored = ranker.score_list(req)
        latency.append(time.perf_counter() - start)
        adapter = scored.info.get("adapter", adapter)
        lists.append((scored, case.target, history, set(pos)))
        if progress is not None:
            progress(n, len(cases))

    fusable = all(s.sasrec is not None for s, *_ in lists)
    grid = GRID if fusable else (1.0,)
    cuts = sorted({5, k})
    ranks = {m: {w: [_rank(s, t, w, k, m) for s, t, *_ in lists] for w in grid}
             for m in (METHODS if fusable else ("rank",))}
    tables = {m: {w: metrics_from_ranks(r, cuts) for w, r in by_w.items()} for m, by_w in ranks.items()}
    source, significance, method = "given", {}, "rank"
    if select and fusable:
        # Each normalisation proposes its guarded weight (fusion.select_weight); the better of the
        # two on these users wins, rank on a tie. Both keep w = 0 unless the gain passes the test.
        triples = [(s.sasrec, s.llm, s.items.index(t) if t in s.items else -1) for s, t, *_ in lists]
        picks = {m: select_weight(triples, k=k, grid=grid, method=m) for m in METHODS}
        method = max(METHODS, key=lambda m: (round(picks[m][1][picks[m][0]], 12), m == "rank"))
        weight, by_weight = picks[method]
        top = max(by_weight, key=lambda w: (round(by_weight[w], 12), -w))
        significance = {"best_weight_by_ndcg": top,
                        "gain_p_value": gain_p_value(triples, top, k, method) if top > 0 else None}
        source = "selected on these users"
    elif weight is None:
        weight, method, source = (ranker.fusion_weight(adapter) if (ranker.fuse and fusable)
                                  else (1.0, "rank", "no-fuse"))
    weight = float(weight) if fusable else 1.0
    method = method if method in tables else "rank"
    table = tables[method]
    chosen_ranks = ranks[method].get(weight) or [_rank(s, t, weight, k, method) for s, t, *_ in lists]
    chosen = metrics_from_ranks(chosen_ranks, cuts)
    base = metrics_from_ranks(base_ranks, cuts)
    lift_ci = ratio_interval(chosen_ranks, base_ranks, k, seed=seed)
    ndcg_ci = mean_interval(chosen_ranks, k, seed=seed)

    valid_ratio, returned = _valid_ratio(lists, weight, k, dataset.n_items, ranker.name == "genrec", method)
    llm_valid_ratio, _ = _valid_ratio(lists, 1.0, k, dataset.n_items, ranker.name == "genrec")
    auc, base_auc = _auc(lists) if ranker.name != "genrec" else (None, None)
    lat = np.asarray(latency) * 1000.0
    return {
        "dataset": dataset.name, "split": split, "ranker": ranker.name, "adapter": adapter,
        "model": ranker.service.llm.describe(), "users": len(cases), "seed": seed,
        "n_candidates": n_candidates, "k": k,
        f"ndcg@{k}": chosen[f"ndcg@{k}"], f"ndcg@{k}_ci95": list(ndcg_ci) if ndcg_ci else None,
        f"hr@{k}": chosen[f"hr@{k}"],
        "ndcg@5": chosen["ndcg@5"], "hr@5": chosen["hr@5"], "mrr": chosen["mrr"],
        f"baseline_ndcg@{k}": base.get(f"ndcg@{k}"), f"baseline_hr@{k}": base.get(f"hr@{k}"),
        "baseline_ndcg@5": base["ndcg@5"], "baseline_mrr": base["mrr"],
        f"llm_only_ndcg@{k}": table[1.0].get(f"ndcg@{k}"), f"llm_only_hr@{k}": table[1.0].get(f"hr@{k}"),
        "lift": (chosen.get(f"ndcg@{k}", 0.0) / base[f"ndcg@{k}"]) if base.get(f"ndcg@{k}") else None,
        "lift_ci95": list(lift_ci) if lift_ci else None,
        "fusion_weight": weight, "fusion_method": method, "fusion_source": source, **significance,
        "ndcg_by_weight": {str(w): m.get(f"ndcg@{k}") for w, m in table.items()},
        **{f"ndcg_by_weight_{name}": {str(w): m.get(f"ndcg@{k}") for w, m in t.items()}
           for name, t in tables.items()},
        "valid_ratio": valid_ratio, "llm_valid_ratio": llm_valid_ratio,
        "returned_per_user": returned / len(cases),
        "candidate_recall": retrieved / len(cases), "auc": auc, "baseline_auc": base_auc,
        "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p90": float(np.percentile(lat, 90)),
    }


def _final(scored, weight: float, k: int, method: str = "rank") -> list[int]:
    if not scored.items:
        return []
    if scored.sasrec is None:
        order = np.lexsort((np.arange(len(scored.items)), -np.asarray(scored.llm, dtype=np.float64)))
    else:
        order = fused_order(scored.sasrec, scored.llm, weight, method)
    return [int(scored.items[i]) for i in order[:k]]


def _valid_ratio(lists, weight: float, k: int, n_items: int, generative: bool,
                 method: str = "rank") -> tuple[float, int]:
    """(distinct valid items / returned items, returned items) over every user's final list.
    Valid: a candidate of that user (generative: a catalog item outside the user's history)."""
    returned = valid = 0
    for scored, _, history, cand_set in lists:
        final, seen, past = _final(scored, weight, k, method), set(), set(history)
        returned += len(final)
        for i in final:
            ok = (0 <= i < n_items and i not in past) if generative else i in cand_set
            valid += ok and i not in seen
            seen.add(i)
    return (valid / returned if returned else 0.0), returned


def _rank(scored, target: int, weight: float, k: int, method: str = "rank") -> int:
    final = _final(scored, weight, k, method)
    return final.index(target) if target in final else MISS


def _auc(lists) -> tuple[float | None, float | None]:
    """Mean over users whose target is a candidate: P(target scores above another candidate)."""
    llm, sas = [], []
    for scored, target, *_ in lists:
        if target not in scored.items or len(scored.items) < 2:
            continue
        j = scored.items.index(target)
        for store, scores in ((llm, scored.llm), (sas, scored.sasrec)):
            if scores is None:
                continue
            s = np.asarray(scores, dtype=np.float64)
            others = np.delete(s, j)
            store.append(float(((others < s[j]).sum() + 0.5 * (others == s[j]).sum()) / len(others)))
    return (float(np.mean(llm)) if llm else None), (float(np.mean(sas)) if sas else None)
