"""LoRA fine-tuning of the LLM on a dataset's training sequences (the tasks of tasks.py).

``run_finetune`` is the whole recipe, top to bottom; each stage is one function below it:
``build_data`` (examples) -> ``build_trainer`` (a fresh LoRA on the served base model or on a copy
of it, AdamW) -> ``resume`` (from ``<out>.partial``) -> ``evaluate`` the base model -> ``train``
(``train_step`` per optimizer step, ``evaluate`` and ``save_partial`` every ``eval_every`` steps)
-> ``evaluate`` the result -> ``save_adapter`` (atomic) -> register it with the running service.

The app keeps serving recommendations from the shared base model while a fine-tune runs, so
where the LoRA lives is a setting, ``share_base`` (shared_base.py): "share" trains it as one more
adapter on the served model, each micro-batch under the service lock (no copy: a 7B model on a
GPU saves ~13.5 GB); "copy" trains on ``copy.deepcopy`` of the base and never takes the lock
(SmolLM2-135M on CPU: ~0.5 GB and a second, and no request waits behind a CPU step of seconds);
"auto" (the default) shares on CUDA and copies on CPU. The CLI owns its model and trains on it.

``accelerate launch -m recdemo finetune ...`` runs the same loop on several GPUs: accelerate
places the model, wraps it for data parallelism and syncs gradients; every process takes its
share of each step's examples, and only the main process evaluates and saves.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from recdemo.config import FinetuneConfig, LimitsConfig
from recdemo.eval.core import sample_cases
from recdemo.finetune import checkpoint as ckpt
from recdemo.finetune.examples import ExampleBuilder
from recdemo.finetune.lora import load_lora_weights, make_accelerator, shares_base
from recdemo.finetune.shared_base import OwnBase, SharedBase
from recdemo.finetune.tasks import TASKS, check_tasks
from recdemo.finetune.validate import Cancelled, answer_loss, check_cancel, example_loss, finite, ranking_metrics

# Spec fields that change what is trained: a partial run resumes only if all of them match.
TRAINING_FIELDS = ("tasks", "steps", "examples", "batch_size", "micro_batch_size", "lora_r", "lora_alpha",
                   "lora_dropout", "lora_targets", "lr", "warmup_steps", "min_lr_ratio", "weight_decay",
                   "grad_clip", "max_length", "max_history", "n_candidates", "with_attributes", "seed",
                   "init_adapter", "eval_candidates", "rank_sasrec_weight")
SHARE_BASE = ("auto", "share", "copy")


def _whole(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class FineTuneSpec(FinetuneConfig):
    """One fine-tune run: FinetuneConfig's fields (every default written there), checked.

    Every field a user can set is checked here, with a one-sentence ValueError, so the CLI and the
    app can pass a request's values straight in; ``validate(limits)`` adds the server's bounds."""

    def __post_init__(self):
        self.tasks = check_tasks(self.tasks)
        for ok, problem in self._checks():
            if not ok:
                raise ValueError(problem)

    def _checks(self):
        """(condition, the sentence when it fails), in the order a form lists the fields."""
        return (
            (_whole(self.steps, 1), f"steps must be a whole number of at least 1, not {self.steps!r}"),
            (self.examples is None or _whole(self.examples, 1),
             f"examples must be a whole number of at least 1 (or unset), not {self.examples!r}"),
            (_whole(self.batch_size, 1), f"batch size must be a whole number of at least 1, not {self.batch_size!r}"),
            (_whole(self.micro_batch_size, 0),
             f"micro batch size must be a whole number (0 = automatic), not {self.micro_batch_size!r}"),
            (_whole(self.lora_r, 1), f"LoRA r must be a whole number of at least 1, not {self.lora_r!r}"),
            (self.lora_alpha is None or (_number(self.lora_alpha) and self.lora_alpha > 0),
             f"LoRA alpha must be a positive number (or unset for 2 * r), not {self.lora_alpha!r}"),
            (_number(self.lora_dropout) and 0 <= self.lora_dropout < 1,
             f"LoRA dropout must be at least 0 and below 1, not {self.lora_dropout!r}"),
            (isinstance(self.lora_targets, str) and any(t.strip() for t in self.lora_targets.split(",")),
             f"LoRA targets must name modules (e.g. q_proj,v_proj) or be all-linear, not {self.lora_targets!r}"),
            (_number(self.lr) and 0 < self.lr < 1,
             f"the learning rate must be a small positive number, e.g. 0.0002, not {self.lr!r}"),
            (self.warmup_steps is None or _whole(self.warmup_steps, 0),
             f"warmup steps must be a whole number of at least 0 (or unset), not {self.warmup_steps!r}"),
            (_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
             f"the minimum learning-rate ratio must be between 0 and 1, not {self.min_lr_ratio!r}"),
            (_number(self.weight_decay) and self.weight_decay >= 0,
             f"weight decay must be at least 0, not {self.weight_decay!r}"),
            (_number(self.grad_clip) and self.grad_clip >= 0,
             f"gradient clipping must be at least 0 (0 = off), not {self.grad_clip!r}"),
            (_whole(self.max_length, 1), f"max length must be a whole number of tokens, not {self.max_length!r}"),
            (_whole(self.max_history, 1),
             f"max history must be a whole number of at least 1, not {self.max_history!r}"),
            (_whole(self.n_candidates, 1),
             f"training candidates must be a whole number of at least 1, not {self.n_candidates!r}"),
            (_whole(self.eval_every, 0), f"eval every must be a whole number of steps (0 = never), not {self.eval_every!r}"),
            (_whole(self.eval_users, 0), f"eval users must be a whole number of at least 0, not {self.eval_users!r}"),
            (_whole(self.eval_candidates, 1),
             f"eval candidates must be a whole number of at least 1, not {self.eval_candidates!r}"),
            (_whole(self.seed, 0), f"the seed must be a whole number of at least 0, not {self.seed!r}"),
            (_number(self.rank_sasrec_weight) and self.rank_sasrec_weight >= 0,
             f"the rank task's SASRec weight must be at least 0, not {self.rank_sasrec_weight!r}"),
            (isinstance(self.init_adapter, str), f"init adapter must be a folder path, not {self.init_adapter!r}"),
            (all(isinstance(getattr(self, k), bool) for k in ("with_attributes", "rank_eval", "resume",
                                                             "gradient_checkpointing", "length_buckets")),
             "with_attributes, rank_eval, resume, gradient_checkpointing and length_buckets must be true or false"),
            (self.share_base in SHARE_BASE,
             f"share base must be one of {', '.join(SHARE_BASE)}, not {self.share_base!r}"),
            (isinstance(self.out, str) and bool(self.out),
             "say where to write the adapter (out), e.g. checkpoints/adapters/movielens-small"),
        )

    def validate(self, limits: LimitsConfig) -> FineTuneSpec:
        """This spec within the server's limits (what a request may ask for); returns it."""
        if self.steps > limits.max_finetune_steps:
            raise ValueError(f"steps must be at most {limits.max_finetune_steps} on this server, not {self.steps}")
        biggest = max(self.n_candidates, self.eval_candidates)
        if biggest > limits.max_candidates:
            raise ValueError(f"candidate lists may hold at most {limits.max_candidates} items, not {biggest}")
        if self.max_history > limits.max_history:
            raise ValueError(f"max history must be at most {limits.max_history} items, not {self.max_history}")
        return self

    @property
    def n_examples(self) -> int:
        return self.examples or self.steps * self.batch_size

    def fingerprint(self, dataset_hash: str, base: str) -> str:
        fields = {k: getattr(self, k) for k in TRAINING_FIELDS}
        text = json.dumps([fields, dataset_hash, base], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def lr_at(step: int, spec: FineTuneSpec) -> float:
    """Linear warmup (Adam's early updates are noisy), then linear decay to min_lr_ratio * lr."""
    warmup = spec.warmup_steps if spec.warmup_steps is not None else max(1, spec.steps // 10)
    if step < warmup:
        return spec.lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, spec.steps - warmup - 1)  # the last step runs at the floor
    return spec.lr * (1.0 - (1.0 - spec.min_lr_ratio) * min(1.0, frac))


@dataclass
class Data:
    builder: ExampleBuilder
    train: list[dict]  # encoded training examples
    dropped: int  # training examples that did not fit max_length
    val: list[dict]  # encoded validation examples
    val_cases: list  # the validation users' cases (ranking metrics score them)
    orders: dict = field(default_factory=dict)  # epoch -> its shuffled order of ``train``


@dataclass
class Trainer:
    """The model being trained and what steps it."""
    model: object  # what accelerate prepared (DDP-wrapped on several GPUs): forward and backward
    optimizer: torch.optim.Optimizer
    params: list
    accelerator: object
    pad_id: int
    llm_name: str
    base: object  # shared_base.SharedBase or OwnBase: where the LoRA lives, ``hold`` around every use
    raw: object = None  # the peft model itself: evaluation and saving use it
    micro: int = 1  # examples per forward
    local: int = 1  # this process's examples per step

    @property
    def adapter(self) -> str:
        return self.base.adapter  # the LoRA's key in the peft model (state dicts, saving)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def prepare(self, batch_size: int, micro_batch_size: int) -> None:
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.raw = self.accelerator.unwrap_model(self.model)
        # CPU: one example per forward wastes no compute on padding; a GPU wants wider matmuls
        self.micro = micro_batch_size or (1 if self.accelerator.device.type == "cpu" else 4)
        self.local = max(1, batch_size // self.accelerator.num_processes)

    def release(self) -> None:
        """Drop the model, its copy of the base (or its adapter on the served model) and the optimizer,
        so their memory goes back before the app carries on (references elsewhere, e.g. in a
        traceback, would otherwise keep them)."""
        if hasattr(self.accelerator, "free_memory"):
            self.accelerator.free_memory()  # accelerate keeps references to what it prepared
        self.base.release()
        self.model = self.raw = self.optimizer = None
        self.params = []


@dataclass
class State:
    """Where the run is: what ``save_partial`` writes and ``resume`` restores (and the token count)."""
    fingerprint: str
    step: int = 0
    losses: list = field(default_factory=list)  # [step, loss] per step
    metrics_before: dict | None = None
    history: list = field(default_factory=list)  # {"step", **metrics} per evaluation
    rng_state: torch.Tensor | None = None  # the CPU RNG at the last step boundary: what a resume restores
    tokens: int = 0
    positions: int = 0  # token positions the training forwards ran on, padding included
    padding: int = 0  # ... of which padding (micro-batches pad to their longest example)
    t_loop: float | None = None  # when training began; a stop after it keeps the partial state


class Report:
    """Progress events for the caller (the app's job page, the CLI): every event has the same keys."""

    def __init__(self, callback, total: int):
        self.callback, self.total = callback, total

    def __call__(self, step: int, phase: str, loss=None, eta_s=None, metrics=None, **extra) -> None:
        if self.callback is not None:
            self.callback({"step": step, "total": self.total, "phase": phase, "loss": loss, "eta_s": eta_s,
                           "metrics": {} if metrics is None else metrics, **extra})


def run_finetune(spec: FineTuneSpec, dataset, service, retriever=None, progress=None,
                 cancel: threading.Event | None = None) -> dict:
    """Fine-tune a LoRA adapter (fresh, or ``spec.init_adapter``'s) on ``dataset``; save it to ``spec.out``.

    Returns {"status": "done", "adapter", "path", "metrics_before", "metrics_after", ...}, or
    {"status": "cancelled", "step", "reason"} when ``cancel`` was set (nothing at ``out`` changes).
    """
    start = time.perf_counter()
    out, llm = Path(spec.out), service.llm
    report = Report(progress, spec.steps)
    report(0, "building examples")
    data = build_data(spec, dataset, llm.tokenizer, retriever)
    trainer = build_trainer(spec, service)
    try:
        state = resume(spec, out, spec.fingerprint(dataset.content_hash, llm.name), trainer)
        trainer.prepare(spec.batch_size, spec.micro_batch_size)
    except BaseException:
        trainer.release()  # e.g. a bad init adapter: no training adapter stays on the served model
        raise
    state.rng_state = torch.get_rng_state()
    try:
        if state.metrics_before is None and trainer.main:  # a fresh LoRA is a no-op: this is the base model
            report(state.step, "evaluating the base model")
            state.metrics_before = evaluate(spec, data, trainer, cancel, full=True)
            state.history.append({"step": 0, **state.metrics_before})
            report(state.step, "evaluated", metrics=state.metrics_before)
        train_seconds = train(spec, data, trainer, state, report, cancel, out)
        metrics_after = {}
        if trainer.main:
            report(state.step, "evaluating the fine-tuned model")
            metrics_after = evaluate(spec, data, trainer, cancel, full=True)
            state.history.append({"step": state.step, **metrics_after})
            check_cancel(cancel)
            report(state.step, "saving", metrics=metrics_after)
            meta = adapter_meta(spec, dataset, data, state, llm.name, metrics_after,
                                time.perf_counter() - start, train_seconds)
            save_adapter(out, trainer, meta)  # the previous adapter stays until the rename
        trainer.accelerator.wait_for_everyone()
    except (Cancelled, KeyboardInterrupt) as stop:
        # Keep what was learned up to the last finished step, so `--resume` (the CLI default) goes on.
        if state.t_loop is not None and state.step > 0:
            save_partial(out, spec, trainer, state)
        if isinstance(stop, KeyboardInterrupt):
            raise
        report(state.step, "cancelled")
        return {"status": "cancelled", "step": state.step,
                "reason": f"cancelled at step {state.step}/{spec.steps}; the previous adapter is unchanged"}
    finally:
        trainer.release()

    path = str(out)
    if trainer.main and hasattr(service, "register_adapter"):
        try:
            service.register_adapter(path)
        except Exception as e:  # noqa: BLE001 - the adapter is saved; loading it is the app's business
            print(f"warning: saved {path} but could not load it into the running model: {e}")
    result = {"status": "done", "adapter": out.name, "path": path, "metrics_before": state.metrics_before,
              "metrics_after": metrics_after, "steps": state.step, "examples": len(data.train),
              "examples_dropped": data.dropped, "seconds": round(time.perf_counter() - start, 1),
              "tokens_per_s": round(state.tokens / max(train_seconds, 1e-9), 1),
              "padding_share": round(state.padding / max(state.positions, 1), 4), "padded_positions": state.padding,
              "positions": state.positions}
    report(state.step, "done", eta_s=0.0, metrics=metrics_after)
    return result


def build_data(spec: FineTuneSpec, dataset, tokenizer, retriever) -> Data:
    """Training examples from ``train_sequences()`` only; validation ones from ``eval_cases("valid")``."""
    builder = ExampleBuilder(dataset, tokenizer, retriever, max_history=spec.max_history,
                             n_candidates=spec.n_candidates, with_attributes=spec.with_attributes,
                             rank_candidates=spec.eval_candidates)
    train, dropped = builder.encode_all(builder.training_examples(spec.tasks, spec.n_examples, spec.seed),
                                        spec.max_length)
    if not train:
        raise ValueError(f"no training example fits in max_length={spec.max_length} tokens; raise --max-length")
    # the same seeded sampler as `evaluate --users N` (eval/core.py), so both can score the same users
    val_cases = sample_cases(dataset, "valid", spec.eval_users, spec.seed) if spec.eval_users else []
    val, _ = builder.encode_all(builder.validation_examples(spec.tasks, val_cases, spec.seed), spec.max_length)
    return Data(builder, train, dropped, val, val_cases)


def build_trainer(spec: FineTuneSpec, service) -> Trainer:
    """A fresh (or init_adapter's) LoRA on the served base or a copy (``place_lora``), and AdamW over
    its factors."""
    llm = service.llm
    accelerator = make_accelerator(llm.device)
    single = [t for t in spec.tasks if TASKS[t].one_device]
    if single and accelerator.num_processes > 1:
        raise ValueError(f"the fine-tuning task '{single[0]}' runs on one device; launch it without accelerate")
    torch.manual_seed(spec.seed)  # fixes the LoRA init and dropout
    random.seed(spec.seed)
    base = place_lora(spec, service, accelerator.num_processes)
    try:
        if spec.init_adapter:
            load_lora_weights(base.model, spec.init_adapter, llm.name, base.adapter)
        optimizer = torch.optim.AdamW(base.params, lr=spec.lr, weight_decay=spec.weight_decay)
    except BaseException:
        base.release()
        raise
    tok = llm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return Trainer(base.model, optimizer, base.params, accelerator, pad_id, llm.name, base)


def place_lora(spec: FineTuneSpec, service, processes: int):
    """SharedBase when ``share_base`` resolves to sharing and the service serves adapters (the app's);
    a service without an adapter manager (the CLI's, a bench's) or one process of several owns its
    model: the LoRA goes on it directly; else OwnBase on a copy."""
    if not shares_base(spec.share_base, service.llm.device):
        return OwnBase(service, spec, copy=True)
    if hasattr(service, "adapters") and processes == 1:
        return SharedBase(service, spec)
    return OwnBase(service, spec, copy=False)


def resume(spec: FineTuneSpec, out: Path, fingerprint: str, trainer: Trainer) -> State:
    """The state of ``<out>.partial`` (adapter weights, optimizer moments, RNG, step) when it belongs to
    this very run (same fingerprint: settings, data and base model); else a fresh start."""
    saved = ckpt.load_partial(out) if spec.resume else None
    if saved is None:
        return State(fingerprint)
    lora, optim_state, rng, state = saved
    if state.get("fingerprint") != fingerprint:
        print(f"note: {ckpt.partial_dir(out)} belongs to a different run (settings or data changed); starting over")
        return State(fingerprint)
    from peft import set_peft_model_state_dict
    set_peft_model_state_dict(trainer.model, lora, adapter_name=trainer.adapter)
    trainer.optimizer.load_state_dict(optim_state)
    ckpt.restore_rng(rng)
    print(f"resuming {out.name} from step {state['step']}/{spec.steps} ({ckpt.partial_dir(out)})")
    return State(fingerprint, step=int(state["step"]), losses=list(state.get("losses", [])),
                 metrics_before=state.get("metrics_before"), history=list(state.get("history", [])))


def train(spec: FineTuneSpec, data: Data, trainer: Trainer, state: State, report: Report, cancel,
          out: Path) -> float:
    """Optimizer steps from ``state.step`` to ``spec.steps``; every ``eval_every`` steps the validation
    loss and a partial save (what a resume continues from). Returns the seconds it took."""
    bar = tqdm(total=spec.steps, initial=state.step, desc=f"finetune {out.name}", disable=not trainer.main,
               unit="step")
    state.t_loop, first_step = time.perf_counter(), state.step
    while state.step < spec.steps:
        check_cancel(cancel)
        lr = lr_at(state.step, spec)
        loss = train_step(spec, trainer, state, step_examples(spec, data, trainer, state.step), lr, cancel)
        state.step += 1
        state.rng_state = torch.get_rng_state()  # at this step boundary: what a resume restores
        state.losses.append([state.step, loss])

        elapsed = time.perf_counter() - state.t_loop
        eta = elapsed / (state.step - first_step) * (spec.steps - state.step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{state.tokens / max(elapsed, 1e-9):.0f}")
        report(state.step, "training", loss=loss, eta_s=eta, lr=lr)
        if state.step < spec.steps and spec.eval_every and state.step % spec.eval_every == 0:
            if trainer.main:
                metrics = evaluate(spec, data, trainer, cancel, full=False)
                state.history.append({"step": state.step, **metrics})
                bar.write(f"step {state.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                             if isinstance(v, float)))
                report(state.step, "evaluated", loss=loss, eta_s=eta, metrics=metrics)
                save_partial(out, spec, trainer, state)
            trainer.accelerator.wait_for_everyone()
    bar.close()
    return time.perf_counter() - state.t_loop


def step_examples(spec: FineTuneSpec, data: Data, trainer: Trainer, step: int) -> list[dict]:
    """This process's share of step ``step``'s examples: ``batch_size`` from a fixed shuffled order per
    epoch, a pure function of the step, so a resumed run sees what the uninterrupted run would have."""
    picked = []
    for j in range(step * spec.batch_size, (step + 1) * spec.batch_size):
        epoch, pos = divmod(j, len(data.train))
        if epoch not in data.orders:
            data.orders[epoch] = np.random.default_rng(spec.seed + epoch).permutation(len(data.train))
        picked.append(data.train[data.orders[epoch][pos]])
    accelerator = trainer.accelerator
    return picked[accelerator.process_index::accelerator.num_processes][:trainer.local]


def train_step(spec: FineTuneSpec, trainer: Trainer, state: State, examples: list[dict], lr: float,
               cancel) -> float:
    """One AdamW step at ``lr`` on ``examples``, gradients accumulated over micro-batches; its loss
    (the mean of the examples' losses, whatever the micro-batches)."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    accelerator, step_loss = trainer.accelerator, 0.0
    parts = micro_batches(examples, trainer.micro, spec.length_buckets)
    for m, part in enumerate(parts):
        check_cancel(cancel)  # a CPU step takes seconds: also check between micro-batches
        # Gradients sync across GPUs only on the last micro-batch (no_sync is a no-op on 1 device).
        sync = nullcontext() if m == len(parts) - 1 else accelerator.no_sync(trainer.model)
        with sync, trainer.base.hold(train=True):  # shared base: the lock, per micro-batch
            loss, n_tokens = example_loss(trainer.model, part, trainer.pad_id, accelerator.device,
                                          spec.rank_sasrec_weight)
            loss = loss * len(part) / len(examples)  # the part's share of the step's mean
            accelerator.backward(loss)
        step_loss += loss.detach().item()
        state.tokens += n_tokens
        positions, padding = padded_positions(part)
        state.positions, state.padding = state.positions + positions, state.padding + padding
    with trainer.base.hold(train=True):
        if spec.grad_clip:
            accelerator.clip_grad_norm_(trainer.params, spec.grad_clip)  # LoRA on tiny batches can spike
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return step_loss


def micro_batches(examples: list[dict], micro: int, buckets: bool = True) -> list[list[dict]]:
    """``examples`` in micro-batches of ``micro``; several to a batch, with ``buckets`` similar lengths
    go together, so a batch pads to less than its longest example would otherwise force on all (issue 16)."""
    if micro > 1 and buckets:
        examples = sorted(examples, key=lambda e: len(e["input_ids"]))  # stable: ties keep their order
    return [examples[i:i + micro] for i in range(0, len(examples), micro)]


def padded_positions(part: list[dict]) -> tuple[int, int]:
    """(positions a micro-batch's forwards run on, of which padding): the examples of a loss that
    pads (the answer-token tasks, tasks.py) share one forward as long as the longest; the others run
    one at a time, unpadded."""
    groups: dict[object, list[int]] = {}
    for e in part:
        groups.setdefault(TASKS[e["task"]].loss, []).append(len(e["input_ids"]))
    positions = padding = 0
    for loss, lengths in groups.items():
        width = len(lengths) * max(lengths) if getattr(loss, "pads", False) else sum(lengths)
        positions, padding = positions + width, padding + width - sum(lengths)
    return positions, padding


def evaluate(spec: FineTuneSpec, data: Data, trainer: Trainer, cancel, full: bool) -> dict:
    """The validation loss; with ``full`` also the score ranker's metrics (the slow part), when a task
    trains what a ranker scores."""
    device = trainer.accelerator.device
    # Shared base: the whole evaluation holds the lock (a GPU scores 32 users in ~2-3 s; requests wait).
    with trainer.base.hold(train=False):
        metrics = answer_loss(trainer.raw, data.val, trainer.pad_id, device, cancel,
                              spec.rank_sasrec_weight) if data.val else {}
        if full and spec.rank_eval and any(TASKS[t].ranking for t in spec.tasks):
            metrics.update(ranking_metrics(trainer.raw, data.builder, data.val_cases, data.builder.retriever,
                                           spec.eval_candidates, seed=spec.seed, cancel=cancel, device=device,
                                           llm_name=trainer.llm_name))
    return finite(metrics)


def save_partial(out: Path, spec: FineTuneSpec, trainer: Trainer, state: State) -> None:
    """``<out>.partial``, atomically (main process only): what ``resume`` continues from."""
    if trainer.main:
        from peft import get_peft_model_state_dict
        ckpt.save_partial(out, get_peft_model_state_dict(trainer.raw, adapter_name=trainer.adapter),
                          trainer.optimizer.state_dict(),
                          {"step": state.step, "fingerprint": state.fingerprint, "losses": state.losses,
                           "metrics_before": state.metrics_before, "history": state.history,
                           "spec": asdict(spec)}, state.rng_state)


def adapter_meta(spec: FineTuneSpec, dataset, data: Data, state: State, llm_name: str, metrics_after: dict,
                 seconds: float, train_seconds: float) -> dict:
    """meta.json: how the adapter was made, and its validation metrics before and after."""
    meta = {"base_model": llm_name, "tasks": list(spec.tasks), "dataset": dataset.name,
            "dataset_hash": dataset.content_hash, "steps": state.step, "metrics": metrics_after,
            "metrics_before": state.metrics_before, "history": state.history,
            "seconds": round(seconds, 1), "train_seconds": round(train_seconds, 1),
            "tokens_per_s": round(state.tokens / max(train_seconds, 1e-9), 1),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "lora": {"r": spec.lora_r, "alpha": spec.lora_alpha or 2 * spec.lora_r,
                     "dropout": spec.lora_dropout, "targets": spec.lora_targets},
            "examples": len(data.train), "examples_dropped": data.dropped, "batch_size": spec.batch_size,
            "lr": spec.lr, "max_length": spec.max_length, "n_candidates": spec.n_candidates,
            "with_attributes": spec.with_attributes, "max_history": spec.max_history,
            "eval_users": len(data.val_cases), "seed": spec.seed, "init_adapter": spec.init_adapter or None,
            "rank_sasrec_weight": spec.rank_sasrec_weight}
    if "fusion_weight" in metrics_after:  # chosen on these validation users (fusion.select_weight)
        meta["fusion"] = {"score": metrics_after["fusion_weight"]}
    return meta


def save_adapter(out: Path, trainer: Trainer, meta: dict) -> None:
    """The adapter folder, atomically (recdemo/storage.py), then the partial state it supersedes goes."""
    with trainer.base.hold(train=False):
        ckpt.save_adapter(out, trainer.raw, meta, trainer.adapter)
    ckpt.clear_partial(out)
