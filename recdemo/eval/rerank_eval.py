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
Profiles are the heuristic profile (``llm.stack.heuristic_profile_of``; every recorded number used
it), as in fine-tuning examples; ``profile_fn`` (``evaluate --profile llm``) swaps in the LLM's.
Users are scored by the evaluation core (eval/core.py); ``batch_size`` > 1 stacks users into one
model call for every ranker (``batch_score.batchable``: score, tallrec, palr, genrec; the same
metrics; latency is then the batch's time per user).
"""
from __future__ import annotations

import numpy as np

from recdemo.eval.core import (UserList, final_items, ranks, retriever_candidates, retrieval_ranks, sample_cases,
                               score_users)
from recdemo.llm.fusion import GRID, METHODS, gain_p_value, select_weight
from recdemo.llm.stack import heuristic_profile_of
from recdemo.metrics import mean_interval, metrics_from_ranks, ratio_interval


def evaluate_rerank(ranker, dataset, retriever, split: str = "test", users: int | None = None, seed: int = 0,
                    n_candidates: int = 50, k: int = 10, weight: float | None = None, select: bool = False,
                    profile_fn=heuristic_profile_of, progress=None, batch_size: int = 1) -> dict:
    """Metrics dict (see the module doc). ``weight``: fusion weight for the reported list (None: the
    ranker's stored weight); ``select``: choose the weight on these users instead (validation)."""
    cases = sample_cases(dataset, split, users, seed)
    if not cases:
        raise ValueError(f"the {split} split has no users with three or more interactions")
    lists = score_users(ranker, cases, retriever_candidates(retriever, n_candidates), profile_fn, k=k,
                        batch_size=batch_size, progress=progress)
    adapter = None
    for u in lists:
        adapter = u.scored.info.get("adapter", adapter)
    fusable = all(u.scored.sasrec is not None for u in lists)
    by_weight, tables = weight_tables(lists, k, fusable)
    weight, method, source, significance = choose_weight(ranker, lists, k, fusable, weight, select, adapter)
    method = method if method in tables else "rank"
    chosen_ranks = by_weight[method].get(weight) or ranks(lists, weight, k, method)
    out = report(ranker, dataset, lists, split, seed, n_candidates, k, adapter, chosen_ranks, tables[method])
    out.update({"fusion_weight": weight, "fusion_method": method, "fusion_source": source, **significance,
                "ndcg_by_weight": {str(w): m.get(f"ndcg@{k}") for w, m in tables[method].items()},
                **{f"ndcg_by_weight_{name}": {str(w): m.get(f"ndcg@{k}") for w, m in t.items()}
                   for name, t in tables.items()}})
    generative = ranker.name == "genrec"
    out["valid_ratio"], returned = _valid_ratio(lists, weight, k, dataset.n_items, generative, method)
    out["llm_valid_ratio"], _ = _valid_ratio(lists, 1.0, k, dataset.n_items, generative)
    out["returned_per_user"] = returned / len(cases)
    out["auc"], out["baseline_auc"] = _auc(lists) if not generative else (None, None)
    return out


def weight_tables(lists: list[UserList], k: int, fusable: bool) -> tuple[dict, dict]:
    """({method: {weight: ranks}}, {method: {weight: metrics}}) over the fusion grid (w = 1 only
    when the ranker's list has nothing to fuse with)."""
    grid = GRID if fusable else (1.0,)
    cuts = sorted({5, k})
    by_weight = {m: {w: ranks(lists, w, k, m) for w in grid} for m in (METHODS if fusable else ("rank",))}
    tables = {m: {w: metrics_from_ranks(r, cuts) for w, r in by_w.items()} for m, by_w in by_weight.items()}
    return by_weight, tables


def choose_weight(ranker, lists: list[UserList], k: int, fusable: bool, weight: float | None, select: bool,
                  adapter) -> tuple[float, str, str, dict]:
    """(weight, method, where it came from, significance details) for the reported list."""
    source, significance, method = "given", {}, "rank"
    if select and fusable:
        # Each normalisation proposes its guarded weight (fusion.select_weight); the better of the
        # two on these users wins, rank on a tie. Both keep w = 0 unless the gain passes the test.
        triples = [u.triple() for u in lists]
        picks = {m: select_weight(triples, k=k, grid=GRID, method=m) for m in METHODS}
        method = max(METHODS, key=lambda m: (round(picks[m][1][picks[m][0]], 12), m == "rank"))
        weight, by_weight = picks[method]
        top = max(by_weight, key=lambda w: (round(by_weight[w], 12), -w))
        significance = {"best_weight_by_ndcg": top,
                        "gain_p_value": gain_p_value(triples, top, k, method) if top > 0 else None}
        source = "selected on these users"
    elif weight is None:
        weight, method, source = (ranker.fusion_weight(adapter) if (ranker.fuse and fusable)
                                  else (1.0, "rank", "no-fuse"))
    return (float(weight) if fusable else 1.0), method, source, significance


def report(ranker, dataset, lists: list[UserList], split: str, seed: int, n_candidates: int, k: int, adapter,
           chosen_ranks: list[int], table: dict) -> dict:
    """The reported list's metrics next to SASRec's top-k and the LLM alone, with intervals and latency."""
    cuts = sorted({5, k})
    chosen = metrics_from_ranks(chosen_ranks, cuts)
    base_ranks = retrieval_ranks(lists, k)
    base = metrics_from_ranks(base_ranks, cuts)
    lift_ci = ratio_interval(chosen_ranks, base_ranks, k, seed=seed)
    ndcg_ci = mean_interval(chosen_ranks, k, seed=seed)
    lat = np.asarray([u.seconds for u in lists]) * 1000.0
    return {
        "dataset": dataset.name, "split": split, "ranker": ranker.name, "adapter": adapter,
        "model": ranker.service.llm.describe(), "users": len(lists), "seed": seed,
        "n_candidates": n_candidates, "k": k,
        f"ndcg@{k}": chosen[f"ndcg@{k}"], f"ndcg@{k}_ci95": list(ndcg_ci) if ndcg_ci else None,
        f"hr@{k}": chosen[f"hr@{k}"],
        "ndcg@5": chosen["ndcg@5"], "hr@5": chosen["hr@5"], "mrr": chosen["mrr"],
        f"baseline_ndcg@{k}": base.get(f"ndcg@{k}"), f"baseline_hr@{k}": base.get(f"hr@{k}"),
        "baseline_ndcg@5": base["ndcg@5"], "baseline_mrr": base["mrr"],
        f"llm_only_ndcg@{k}": table[1.0].get(f"ndcg@{k}"), f"llm_only_hr@{k}": table[1.0].get(f"hr@{k}"),
        "lift": (chosen.get(f"ndcg@{k}", 0.0) / base[f"ndcg@{k}"]) if base.get(f"ndcg@{k}") else None,
        "lift_ci95": list(lift_ci) if lift_ci else None,
        "candidate_recall": sum(u.target in u.candidates for u in lists) / len(lists),
        "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p90": float(np.percentile(lat, 90)),
    }


def _valid_ratio(lists: list[UserList], weight: float, k: int, n_items: int, generative: bool,
                 method: str = "rank") -> tuple[float, int]:
    """(distinct valid items / returned items, returned items) over every user's final list.
    Valid: a candidate of that user (generative: a catalog item outside the user's history)."""
    returned = valid = 0
    for u in lists:
        final, seen = final_items(u.scored, weight, k, method), set()
        past, cand_set = set(u.history), set(u.candidates)
        returned += len(final)
        for i in final:
            ok = (0 <= i < n_items and i not in past) if generative else i in cand_set
            valid += ok and i not in seen
            seen.add(i)
    return (valid / returned if returned else 0.0), returned


def _auc(lists: list[UserList]) -> tuple[float | None, float | None]:
    """Mean over users whose target is a candidate: P(target scores above another candidate)."""
    llm, sas = [], []
    for u in lists:
        scored = u.scored
        if u.target not in scored.items or len(scored.items) < 2:
            continue
        j = scored.items.index(u.target)
        for store, scores in ((llm, scored.llm), (sas, scored.sasrec)):
            if scores is None:
                continue
            s = np.asarray(scores, dtype=np.float64)
            others = np.delete(s, j)
            store.append(float(((others < s[j]).sum() + 0.5 * (others == s[j]).sum()) / len(others)))
    return (float(np.mean(llm)) if llm else None), (float(np.mean(sas)) if sas else None)
