"""Training SASRec: one plain loop (nanoGPT style), validation NDCG@10, keep the best epoch.

Only ``dataset.train_sequences()`` is used for training; validation cases (``eval_cases("valid")``)
have training-only histories, so neither validation nor test items ever reach the weights.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from recdemo.config import RetrievalConfig
from recdemo.metrics import metrics_from_ranks, ranks_of_targets
from recdemo.retrieval.sasrec import SASRec, SASRecConfig
from recdemo.retrieval.text_index import TextIndex


def make_windows(sequences, maxlen: int) -> np.ndarray:
    """Cut every training sequence into windows of ``maxlen + 1`` shifted ids, left-padded.

    Window w trains input w[:-1] to predict w[1:] at every position, so every item of a long
    history is a target once (not only the last ``maxlen``, as in the original SASRec).
    Windows are cut from the end backwards; consecutive windows overlap by one item so that
    no transition is lost.
    """
    rows = []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64) + 1
        end = len(seq)
        while end >= 2:
            start = max(0, end - maxlen - 1)
            row = np.zeros(maxlen + 1, dtype=np.int64)
            row[-(end - start):] = seq[start:end]
            rows.append(row)
            end = start + 1  # the next window ends where this one's first input starts
            if start == 0:
                break
    return np.stack(rows) if rows else np.zeros((0, maxlen + 1), dtype=np.int64)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches: shuffled, then grouped by window length within blocks of 64 batches
    (windows of a batch are about as long, so little work goes to padding); batches in random order."""
    perm = rng.permutation(len(lengths))
    block = batch_size * 64
    batches = []
    for i in range(0, len(perm), block):
        part = perm[i:i + block]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def seen_before(inputs: torch.Tensor, keep: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, item) pairs to mask: for the k-th kept position, every item its window holds up to and
    including it, except that position's own target (a repeat stays a valid answer).

    Rows follow ``hidden[keep]``'s order; items are 0-based catalog indices.
    """
    b, length = inputs.shape
    row_of = torch.full((b, length), -1, dtype=torch.long)
    row_of[keep] = torch.arange(int(keep.sum()))
    upto = torch.ones(length, length, dtype=torch.bool).tril()  # [t, s]: s <= t
    wb, wt, ws = (upto[None] & (inputs > 0)[:, None, :] & keep[:, :, None]).nonzero(as_tuple=True)
    rows, items = row_of[wb, wt], inputs[wb, ws] - 1
    own = items == y[rows]
    return rows[~own], items[~own]


def sequence_loss(model: SASRec, batch: torch.Tensor, loss: str, gen: torch.Generator,
                  negatives: int = 0, exclude_seen: bool = False) -> torch.Tensor:
    """Next-item loss over every real position of a batch of windows."""
    # Drop leading columns that are padding in every window: no work on them, same result
    # (positions count from the right).
    first = int((batch > 0).any(dim=0).nonzero()[0])
    batch = batch[:, first:]
    inputs, targets = batch[:, :-1], batch[:, 1:]
    table = model.item_table()  # once per step: with item features it is a projection of every item
    hidden = model(inputs, table)
    keep = (inputs > 0) & (targets > 0)
    h, y = hidden[keep], targets[keep] - 1  # back to 0-based catalog indices
    emb = table[1:]  # output embeddings: row i scores catalog item i
    if loss == "ce" and negatives <= 0:
        # Full softmax over all items: every other item is a negative (much stronger than one).
        logits = h @ emb.T
        if exclude_seen:
            # Evaluation and the app never offer an item the user already has, so training should
            # not spend capacity pushing those items down: they leave the softmax.
            rows, items = seen_before(inputs, keep, y)
            logits = logits.index_put((rows, items), torch.tensor(float("-inf")))
        return F.cross_entropy(logits, y)
    if loss == "ce":
        # Sampled softmax: the target against `negatives` uniform items shared by the whole batch
        # (a negative that happens to be a position's own target is masked out).
        neg = torch.randint(0, emb.shape[0], (negatives,), generator=gen)
        logits = torch.cat([(h * emb[y]).sum(-1, keepdim=True), h @ emb[neg].T], dim=1)
        logits[:, 1:] = logits[:, 1:].masked_fill(neg[None, :] == y[:, None], float("-inf"))
        return F.cross_entropy(logits, torch.zeros_like(y))
    if loss == "bce":
        # The paper's loss: the true next item vs one uniformly sampled negative per position.
        neg = torch.randint(0, emb.shape[0], y.shape, generator=gen)
        pos_logit = (h * emb[y]).sum(-1)
        neg_logit = (h * emb[neg]).sum(-1)
        return (F.softplus(-pos_logit) + F.softplus(neg_logit)).mean()
    raise ValueError(f"unknown loss {loss!r}: use 'ce' or 'bce'")


@torch.no_grad()
def validation_metrics(model: SASRec, cases, batch_size: int = 512) -> dict:
    """Full-ranking metrics (history excluded) on leave-one-out cases."""
    ranks = []
    for i in range(0, len(cases), batch_size):
        chunk = cases[i:i + batch_size]
        histories = [c.history for c in chunk]
        scores = model.score(histories).numpy()
        ranks.append(ranks_of_targets(scores, [c.target for c in chunk], histories))
    return metrics_from_ranks(np.concatenate(ranks) if ranks else [])


def lr_at(step: int, total: int, cfg: RetrievalConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak by the last planned step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


class TrainingCancelled(Exception):
    """Raised between steps when the caller's ``cancel`` event is set (nothing is saved)."""


def _check(cfg: RetrievalConfig) -> None:
    if cfg.exclude_seen and (cfg.loss != "ce" or cfg.negatives):
        raise ValueError("exclude_seen works with the full-softmax loss only (loss 'ce', no sampled negatives); "
                         "train with --no-exclude-seen for this loss")


def _windows(dataset, cfg: RetrievalConfig) -> torch.Tensor:
    windows = torch.from_numpy(make_windows(dataset.train_sequences(), cfg.maxlen))
    if len(windows) == 0:
        raise ValueError(f"dataset {dataset.name!r} has no user with two or more training items; "
                         "SASRec cannot be trained on it")
    return windows


def _model(dataset, cfg: RetrievalConfig, item_features) -> SASRec:
    model = SASRec(SASRecConfig(n_items=dataset.n_items, maxlen=cfg.maxlen, hidden=cfg.hidden,
                                layers=cfg.layers, heads=cfg.heads, dropout=cfg.dropout))
    if cfg.text_features:
        # Items that read alike start alike: the MiniLM title+attribute vectors (the search index's,
        # cached) through a learned projection; folded into the item table before saving.
        if item_features is None:
            item_features = TextIndex.for_dataset(dataset, cfg).embeddings
        model.attach_item_features(torch.as_tensor(item_features))
    return model


def _optimizer(model: SASRec, cfg: RetrievalConfig) -> torch.optim.Optimizer:
    # Weight decay on matrices only (not on LayerNorm gains, biases, or embeddings' padding row).
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))


@dataclass
class _Run:
    """What the loop carries from step to step."""
    model: SASRec
    optim: torch.optim.Optimizer
    windows: torch.Tensor
    lengths: np.ndarray
    total_steps: int
    rng: np.random.Generator
    gen: torch.Generator
    step: int = 0


def _train_epoch(run: _Run, cfg: RetrievalConfig, bar, cancel) -> float:
    """One pass over the shuffled windows (batches of similar length); returns the summed loss."""
    run.model.train()
    epoch_loss = 0.0
    for rows in length_batches(run.lengths, cfg.batch_size, run.rng):
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled("SASRec training was cancelled")
        batch = run.windows[torch.from_numpy(rows)]
        for group in run.optim.param_groups:
            group["lr"] = lr_at(run.step, run.total_steps, cfg)
        loss = sequence_loss(run.model, batch, cfg.loss, run.gen, cfg.negatives, cfg.exclude_seen)
        run.optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)  # guard against spikes
        run.optim.step()
        with torch.no_grad():
            run.model.item_emb.weight[0].zero_()  # padding stays zero
        run.step += 1
        epoch_loss += loss.item()
        bar.update(1)
    return epoch_loss


def train_sasrec(dataset, cfg: RetrievalConfig, progress: bool = True, item_features: np.ndarray | None = None,
                 cancel=None, on_epoch=None):
    """Train SASRec on ``dataset.train_sequences()``; returns (model in eval mode, report dict).

    ``item_features`` ([n_items, d]) replaces the text index's embeddings when ``cfg.text_features``
    is on (tests pass small ones). ``cancel`` (a threading.Event) stops between steps with
    TrainingCancelled; ``on_epoch(epoch, max_epochs, record)`` reports progress (the app's bar)."""
    cfg = cfg.for_dataset(dataset.name)  # fill the per-dataset settings left at None
    _check(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    windows = _windows(dataset, cfg)
    valid_cases = dataset.eval_cases("valid")
    model = _model(dataset, cfg, item_features)
    steps_per_epoch = math.ceil(len(windows) / cfg.batch_size)
    run = _Run(model, _optimizer(model, cfg), windows, (windows > 0).sum(dim=1).numpy(),
               steps_per_epoch * cfg.epochs, rng, gen)
    best = {"ndcg@10": -1.0, "epoch": 0, "state": None, "metrics": {}}
    history, bad_checks = [], 0
    t0 = time.perf_counter()
    bar = tqdm(total=run.total_steps, desc=f"SASRec {dataset.name}", unit="step", disable=not progress)
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        record = {"epoch": epoch, "loss": _train_epoch(run, cfg, bar, cancel) / steps_per_epoch,
                  "seconds": time.perf_counter() - t_epoch}
        # validation every few epochs; keep the best weights, stop when it stops improving
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            metrics = validation_metrics(model, valid_cases)
            record["valid"] = {k: metrics[k] for k in ("ndcg@10", "hr@10")}
            if metrics["ndcg@10"] > best["ndcg@10"]:
                best = {"ndcg@10": metrics["ndcg@10"], "epoch": epoch, "metrics": metrics,
                        "state": copy.deepcopy(model.state_dict())}
                bad_checks = 0
            else:
                bad_checks += 1
        record["elapsed"] = time.perf_counter() - t0
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", val_ndcg10=f"{best['ndcg@10']:.4f}", best_ep=best["epoch"])
        if on_epoch is not None:
            on_epoch(epoch, cfg.epochs, record)
        if bad_checks >= cfg.patience:
            break
    bar.close()
    return _finish(model, best, history, run, dataset, cfg, t0)


def _finish(model: SASRec, best: dict, history: list, run: _Run, dataset, cfg: RetrievalConfig, t0: float):
    """The best epoch's weights, features folded into the item table, in eval mode; and the report."""
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.fold_item_features()
    model.eval()
    seconds = time.perf_counter() - t0
    report = {
        "dataset": dataset.name, "dataset_hash": dataset.content_hash, "loss": cfg.loss,
        "best_epoch": best["epoch"], "epochs_run": len(history), "valid": best["metrics"],
        "seconds": seconds, "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])),
        "seconds_to_best": history[best["epoch"] - 1]["elapsed"] if best["epoch"] else seconds,
        "torch_threads": torch.get_num_threads(),
        "windows": int(len(run.windows)), "steps": run.step, "history": history,
    }
    return model, report
