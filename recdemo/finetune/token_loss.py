"""The answer-token loss: cross-entropy on the answer's tokens of a right-padded micro-batch.

Every text task (and ``sequence``) trains and validates with it; tasks.py names which loss each
task uses, validate.py and the loop only call the task's loss.
"""
from __future__ import annotations

import torch

from recdemo.llm.models import model_parts


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


def _answer_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) from the first answer position on: only those positions get logits
    (``logits_to_keep``): the output projection onto the 49k-token vocabulary is ~20% of SmolLM2's
    FLOPs per token, and the prompt tokens, which are most of every sequence, have no label anyway."""
    labels = batch["labels"]
    answer = labels != -100
    first = int(answer.float().argmax(dim=1).min()) if bool(answer.any()) else labels.shape[1] - 1
    first = max(first, 1)  # position first-1 predicts token first
    keep = labels.shape[1] - first + 1
    decoder, head = model_parts(model)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    # contiguous before the projection: a strided 3-D input to a frozen head makes torch.matmul copy
    # the 49k x d weight once per row (models.model_parts); the validation pass runs without gradients
    logits = head(hidden[:, -keep:-1].contiguous())
    return logits.float(), labels[:, first:]


def answer_token_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over the batch's answer tokens, their count)."""
    logits, target = _answer_logits(model, batch)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100)
    return loss, int((target != -100).sum())


def answer_token_losses(model, batch: dict) -> tuple[torch.Tensor, int]:
    """(each row's mean cross-entropy over its own answer tokens, their count in all).

    Every example weighs the same however the examples are grouped into micro-batches, so sorting
    them by length (less padding) leaves the step's loss as it was."""
    if batch["labels"].shape[0] == 1:  # the batch mean is the row's; this path keeps CPU runs bit-identical
        loss, n = answer_token_loss(model, batch)
        return loss.unsqueeze(0), n
    logits, target = _answer_logits(model, batch)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                  ignore_index=-100, reduction="none").view(target.shape)
    counts = (target != -100).sum(dim=1)
    return per_token.sum(dim=1) / counts.clamp(min=1), int(counts.sum())
