"""The answer-token loss, batched: each row's own mean, however rows are padded together."""
from __future__ import annotations

import torch

from recdemo.finetune.examples import ExampleBuilder
from recdemo.finetune.token_loss import answer_token_loss, answer_token_losses, collate


def test_each_rows_loss_is_its_loss_alone(tiny_llm, toy_dataset):
    builder = ExampleBuilder(toy_dataset, tiny_llm.tokenizer)
    encs, _ = builder.encode_all(builder.training_examples(["genrec", "recommend", "tallrec"], 3, seed=1), 4096)
    assert len({len(e["input_ids"]) for e in encs}) > 1  # padding is in play
    with torch.no_grad():
        rows, n = answer_token_losses(tiny_llm.model, collate(encs, 0, "cpu"))
        alone = [answer_token_loss(tiny_llm.model, collate([e], 0, "cpu")) for e in encs]
    assert torch.allclose(rows, torch.stack([loss for loss, _ in alone]), atol=1e-5)
    assert n == sum(k for _, k in alone)
    # the batch mean weighs rows by their answer tokens: not what the rows' mean is
    with torch.no_grad():
        batch_mean = answer_token_loss(tiny_llm.model, collate(encs, 0, "cpu"))[0]
    assert abs(float(batch_mean) - float(rows.mean())) > 1e-4
