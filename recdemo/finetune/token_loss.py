"""The answer-token loss: cross-entropy on the answer's tokens of a right-padded micro-batch.

Every text task (and ``sequence``) trains and validates with it; tasks.py names which loss each
task uses, validate.py and the loop only call the task's loss.
"""
from __future__ import annotations

import torch


def collate(encoded: list[dict], pad_id: int, device) -> dict:
    """Right-pad a micro-batch; padding is masked out of attention and of the loss."""
    length = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def answer_token_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over the answer tokens, their count).

    Only the answer's positions get logits (``logits_to_keep``): the output projection onto the
    49k-token vocabulary is ~20% of SmolLM2's FLOPs per token, and the prompt tokens, which are
    most of every sequence, have no label anyway."""
    labels = batch["labels"]
    answer = labels != -100
    first = int(answer.float().argmax(dim=1).min()) if bool(answer.any()) else labels.shape[1] - 1
    first = max(first, 1)  # position first-1 predicts token first
    keep = labels.shape[1] - first + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits[:, :-1]
    target = labels[:, first:]
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100)
    return loss, int((target != -100).sum())
