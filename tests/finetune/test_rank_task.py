"""Fine-tuning task ``rank``: the score ranker's listwise loss over SASRec's candidates."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recdemo.finetune.examples import ExampleBuilder
from recdemo.finetune.tasks import Example
from recdemo.finetune.loop import FineTuneSpec, run_finetune
from recdemo.finetune.validate import answer_loss, example_loss
from recdemo.finetune.rank_task import encode_rank, rank_candidates, rank_loss
from recdemo.llm.rankers.score import ScoreRanker
from recdemo.records import Candidate, RerankRequest


def rank_example(builder, user: int = 0, cut: int = 4) -> Example:
    seq = builder.train[user]
    return builder._example("rank", user, seq[:cut], seq[cut:cut + 1], np.random.default_rng(0))


def test_rank_candidates_are_sasrecs_list_with_the_target_put_in(toy_dataset, pop_retriever):
    history = [int(x) for x in toy_dataset.train_sequences()[0][:4]]
    top = [i for i, _ in pop_retriever.top_k(history, 8)]
    assert rank_candidates(pop_retriever, history, top[3], 8) == (top, True)  # already there: unchanged
    missing = next(i for i in range(toy_dataset.n_items) if i not in top and i not in history)
    got, hit = rank_candidates(pop_retriever, history, missing, 8)
    assert got == top[:7] + [missing] and not hit
    # the user's own items are never negatives, nor items outside ``allowed``; the list stays full
    banned, allowed = top[:2], np.ones(toy_dataset.n_items, bool)
    allowed[top[2]] = False
    got, hit = rank_candidates(pop_retriever, history, top[5], 8, banned=banned + [top[5]], allowed=allowed)
    assert hit
    assert top[5] in got and len(got) == 8 and not set(got) & set(banned + [top[2]])
    assert got == [i for i in [x for x, _ in pop_retriever.top_k(history, 20)]
                   if i not in banned and i != top[2]][:8]
    with pytest.raises(ValueError, match="train SASRec first"):
        rank_candidates(None, history, missing, 8)


def test_rank_loss_is_the_score_rankers_cross_entropy_over_its_list(tiny_llm, toy_dataset, pop_retriever):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer, pop_retriever, rank_candidates=12)
    ex = rank_example(builder)
    enc = encode_rank(builder, ex, 4096)
    assert enc["target"] in enc["candidates"] and len(enc["candidates"]) == 12
    with torch.no_grad():
        loss, tokens = rank_loss(tiny_llm.model, enc)
    # the same list through the ranker that serves recommendations
    ranker = ScoreRanker(tiny_llm, toy_dataset, pop_retriever, fuse=False)
    cands = [Candidate(i, 0.0, r) for r, i in enumerate(enc["candidates"], 1)]
    req = RerankRequest(history=ex.history, candidates=cands, profile=None, k=10)
    scored = ranker.score_list(req)
    target = scored.items.index(enc["target"])
    want = -torch.log_softmax(torch.tensor(scored.llm), 0)[target]
    assert abs(float(loss) - float(want)) < 1e-4
    # the residual variant adds SASRec's z-scored score to the same logits
    sas = np.array([pop_retriever.scores[i] for i in scored.items])
    z = (sas - sas.mean()) / sas.std()
    with torch.no_grad():
        residual = float(rank_loss(tiny_llm.model, enc, sasrec_weight=2.0)[0])
    assert abs(residual - float(-torch.log_softmax(torch.tensor(scored.llm + 2.0 * z), 0)[target])) < 1e-4
    assert abs(residual - float(loss)) > 1e-3
    assert enc["input_ids"] == ranker.prompt_ids(req)
    assert tokens > len(enc["input_ids"])  # the prompt and the trie's branching tokens


def test_rank_examples_are_cuts_whose_next_item_sasrec_found(tiny_llm, toy_dataset, pop_retriever):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer, pop_retriever, rank_candidates=8)
    examples = builder.training_examples(["rank"], 30, seed=0)
    for ex in examples:
        own = set(int(x) for x in toy_dataset.sequences[ex.user]) - {ex.items[0]}
        assert ex.sasrec_hit and ex.items[0] in ex.candidates and not own & set(ex.candidates)
        assert ex.candidates == rank_candidates(pop_retriever, ex.history, ex.items[0], 8, own)[0]
    # validation keeps only the users whose held-out item SASRec's list holds
    cases = toy_dataset.eval_cases("valid")
    val = builder.validation_examples(["rank"], cases)
    held = [c for c in cases if c.target in [i for i, _ in pop_retriever.top_k(c.history, 8)]]
    assert 0 < len(val) == len(held) < len(cases)


def test_rank_loss_has_gradients_and_counts_as_one_validation_token(tiny_llm, toy_dataset, pop_retriever):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer, pop_retriever, rank_candidates=10)
    encs = [encode_rank(builder, rank_example(builder, u), 4096) for u in (0, 1)]
    genrec = builder.encode(builder.training_examples(["genrec"], 1, seed=0)[0], 4096)
    tiny_llm.model.zero_grad()
    loss, tokens = example_loss(tiny_llm.model, encs + [genrec], 0, torch.device("cpu"))
    loss.backward()
    grads = [p.grad for p in tiny_llm.model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert tokens == sum(rank_loss(tiny_llm.model, e)[1] for e in encs) + len(genrec["input_ids"])
    tiny_llm.model.zero_grad()
    got = answer_loss(tiny_llm.model, encs, 0, torch.device("cpu"))
    with torch.no_grad():
        want = np.mean([float(rank_loss(tiny_llm.model, e)[0]) for e in encs])
    assert abs(got["val_loss_rank"] - want) < 1e-5


def test_encode_rank_drops_old_history_to_fit_and_gives_up_without_room(tiny_llm, toy_dataset, pop_retriever):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer, pop_retriever, rank_candidates=10)
    ex = rank_example(builder, cut=8)
    full = encode_rank(builder, ex, 4096)
    with torch.no_grad():
        run = rank_loss(tiny_llm.model, full)[1]  # prompt + the trie's branching tokens: the budget
    short = encode_rank(builder, ex, run - 1)
    assert short is not None and short["n_history"] < full["n_history"]
    assert encode_rank(builder, ex, run - len(full["input_ids"])) is None  # no room for a history item


def test_finetuning_on_rank_raises_the_targets_probability(tiny_llm, toy_dataset, pop_retriever, tmp_path):
    from recdemo.config import LLMConfig
    from recdemo.llm.service import LLMService

    service = LLMService(LLMConfig(adapter_dir=str(tmp_path / "adapters")), llm=tiny_llm)
    spec = FineTuneSpec(tasks=["rank"], examples=2, steps=12, batch_size=2, lr=2e-2, lora_dropout=0.0,
                        eval_every=0, eval_users=12, eval_candidates=8, rank_eval=False,  # every toy user
                        lora_targets="all-linear", out=str(tmp_path / "adapters" / "rank"))
    losses = []
    result = run_finetune(spec, toy_dataset, service, pop_retriever,
                          progress=lambda e: e.get("loss") is not None and losses.append(e["loss"]))
    assert result["status"] == "done" and len(losses) == 12
    assert losses[-1] < 0.5 * losses[0]
    assert "val_loss_rank" in result["metrics_after"]


def test_finetuning_on_rank_without_sasrec_is_a_clear_error(tiny_llm, toy_dataset, tmp_path):
    from recdemo.config import LLMConfig
    from recdemo.llm.service import LLMService

    service = LLMService(LLMConfig(adapter_dir=str(tmp_path / "adapters")), llm=tiny_llm)
    spec = FineTuneSpec(tasks=["rank"], steps=1, batch_size=1, out=str(tmp_path / "adapters" / "rank"))
    with pytest.raises(ValueError, match="SASRec"):
        run_finetune(spec, toy_dataset, service, None)
    assert not (tmp_path / "adapters" / "rank").exists()
