"""The fine-tune task registry: every task makes, encodes and trains on its own examples."""
from __future__ import annotations

import pytest
import torch

from recdemo.finetune.examples import ExampleBuilder
from recdemo.finetune.rank_task import rank_loss
from recdemo.finetune.tasks import ANSWER_TOKENS, TASKS, check_tasks, task_names
from recdemo.finetune.validate import example_loss


def test_registry_names_and_labels():
    assert task_names() == list(TASKS) == ["recommend", "recommend_retrieval", "tallrec", "genrec", "sequence",
                                           "rank"]
    assert all(TASKS[n].name == n for n in TASKS)
    labels = [t.label for t in TASKS.values()]
    assert all(labels) and len(set(labels)) == len(labels)  # the UI tells them apart


def test_check_tasks_accepts_lists_and_comma_strings_and_names_the_unknown():
    assert check_tasks(["rank", " genrec "]) == ["rank", "genrec"]
    with pytest.raises(ValueError, match=r"unknown fine-tuning task\(s\) poetry: choose from recommend"):
        check_tasks("genrec,poetry")
    for empty in (None, "", [], " , "):
        with pytest.raises(ValueError, match="none given"):
            check_tasks(empty)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_builds_encodes_and_trains(name, tiny_llm, toy_dataset, pop_retriever):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer, pop_retriever, n_candidates=6, rank_candidates=8)
    task = TASKS[name]
    examples = builder.training_examples([name], 4, seed=2)
    assert [e.task for e in examples] == [name] * 4
    encoded, dropped = builder.encode_all(examples, 4096)
    assert dropped == 0 and all(e["task"] == name for e in encoded)
    if task.loss is ANSWER_TOKENS:  # something to learn, and never the prompt
        assert all(any(x != -100 for x in e["labels"]) for e in encoded)
        assert all(e["labels"][0] == -100 for e in encoded)
    tiny_llm.model.zero_grad()
    loss, tokens = task.loss.train_loss(tiny_llm.model, encoded, 0, torch.device("cpu"))
    (loss / len(encoded)).backward()
    loss = loss.detach()
    assert torch.isfinite(loss) and float(loss) > 0 and tokens > 0
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in tiny_llm.model.parameters())
    tiny_llm.model.zero_grad()


def test_a_mixed_micro_batch_is_the_mean_of_its_tasks_losses(tiny_llm, toy_dataset, pop_retriever):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer, pop_retriever, rank_candidates=8)
    part, _ = builder.encode_all(builder.training_examples(["genrec", "rank", "recommend"], 3, seed=0), 4096)
    text = [part[0], part[2]]
    with torch.no_grad():
        got, tokens = example_loss(tiny_llm.model, part, 0, torch.device("cpu"))
        padded, text_tokens = ANSWER_TOKENS.train_loss(tiny_llm.model, text, 0, torch.device("cpu"))
        ranked, rank_tokens = rank_loss(tiny_llm.model, part[1])
    assert float(got) == pytest.approx((float(padded) + float(ranked)) / 3, abs=1e-6)
    assert tokens == text_tokens + rank_tokens


def test_validation_drops_only_what_a_task_cannot_use(tiny_llm, toy_dataset, pop_retriever):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer, pop_retriever, rank_candidates=8)
    cases = toy_dataset.eval_cases("valid")
    for name in TASKS:
        val = builder.validation_examples([name], cases)
        if name == "rank":  # only the users whose held-out item SASRec's list holds
            assert 0 < len(val) < len(cases) and all(e.sasrec_hit for e in val)
        else:
            assert [e.items for e in val] == [[c.target] for c in cases]
