"""Fine-tuning validation: answer-token loss and the score ranker's metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recdemo.finetune.examples import ExampleBuilder
from recdemo.finetune.token_loss import answer_token_loss, collate
from recdemo.finetune.validate import answer_loss, ranking_metrics
from recdemo.llm.fusion import fused_order, select_weight, target_rank


def test_answer_loss_counts_answer_tokens_only(tiny_llm, toy_dataset):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer)
    enc = builder.encode(builder.training_examples(["genrec"], 1, seed=0)[0], 4096)
    got = answer_loss(tiny_llm.model, [enc], tiny_llm.tokenizer.pad_token_id, torch.device("cpu"))
    batch = collate([enc], tiny_llm.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        logits = tiny_llm.model(input_ids=batch["input_ids"]).logits[0]
    n = enc["labels"].index(next(x for x in enc["labels"] if x != -100))
    answer = torch.tensor(enc["input_ids"][n:])
    want = torch.nn.functional.cross_entropy(logits[n - 1:-1], answer).item()
    assert abs(got["val_loss"] - want) < 1e-4 and abs(got["val_loss_genrec"] - want) < 1e-4


def test_answer_token_loss_equals_the_full_loss_on_a_padded_batch(tiny_llm, toy_dataset):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer)
    encs = [builder.encode(e, 4096) for e in builder.training_examples(["genrec", "recommend"], 2, seed=1)]
    assert len(encs[0]["input_ids"]) != len(encs[1]["input_ids"])
    batch = collate(encs, tiny_llm.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        full = tiny_llm.model(**batch).loss
        mine, n = answer_token_loss(tiny_llm.model, batch)
    assert torch.allclose(full, mine, atol=1e-5)
    assert n == sum(sum(x != -100 for x in e["labels"]) for e in encs)


class ListRetriever:
    """SASRec stand-in: a fixed candidate list (descending scores) per call."""
    def __init__(self, items):
        self.items = items

    def top_k(self, history, k):
        return [(i, float(k - r)) for r, i in enumerate(self.items[:k])]


def test_ranking_metrics_follow_the_score_ranker_and_sasrec(tiny_llm, toy_dataset):
    from recdemo.llm.rankers.score import ScoreRanker
    from recdemo.records import Candidate, RerankRequest

    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer)
    cases = toy_dataset.eval_cases("valid")[:4]
    hit, miss = cases[0], cases[1]
    others = [i for i in range(toy_dataset.n_items) if i not in set(hit.history) | {hit.target, miss.target}
              and i not in set(miss.history)]
    items = others[:5] + [hit.target]  # hit's target is SASRec's 6th; miss's target is absent
    m = ranking_metrics(tiny_llm.model, builder, [hit, miss], ListRetriever(items), n_candidates=6, k=3,
                        device="cpu")
    assert m["users"] == 2 and m["users_with_target_in_candidates"] == 1 and m["candidates"] == 6
    assert m["sasrec_mrr"] == pytest.approx((1 / 6) / 2)  # rank 6 for one user, a miss for the other
    # the LLM rank equals the score ranker's own order of the same request
    ranker = ScoreRanker(tiny_llm, toy_dataset, None, fuse=False)
    req = RerankRequest(history=[int(x) for x in hit.history], k=3, profile=None,
                        candidates=[Candidate(i, float(6 - r), r + 1) for r, i in enumerate(items)])
    from recdemo.finetune.examples import make_profile
    req.profile = make_profile(toy_dataset.catalog, req.history)
    scored = ranker.score_list(req)
    llm = scored.llm
    rank = int((llm > llm[-1]).sum() + (llm[:-1] == llm[-1]).sum())
    assert m["mrr"] == pytest.approx((1 / (rank + 1)) / 2)
    # the fused metrics: the weight fusion picks on these two users, and the target's place in that order
    lists = [(scored.sasrec, llm, scored.items.index(hit.target)), (np.zeros(1), np.zeros(1), -1)]
    weight = select_weight(lists, k=3)[0]
    fused_rank = target_rank(fused_order(scored.sasrec, llm, weight), scored.items.index(hit.target))
    assert m["fusion_weight"] == weight
    assert m["fused_ndcg@10"] == pytest.approx((1 / np.log2(fused_rank + 2)) / 2)
    assert m["sasrec_ndcg@10"] == pytest.approx((1 / np.log2(5 + 2)) / 2)  # SASRec's 6th


def test_ranking_metrics_without_a_retriever_use_sampled_lists(tiny_llm, toy_dataset):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer)
    cases = toy_dataset.eval_cases("valid")[:3]
    m = ranking_metrics(tiny_llm.model, builder, cases, None, n_candidates=4, device="cpu")
    assert m["users"] == 3 and m["users_with_target_in_candidates"] == 3
    assert m["random_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)  # the exact expectation
    assert m["hr@5"] == 1.0 and "fusion_weight" not in m
