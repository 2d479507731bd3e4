"""LoRA fine-tuning of the LLM on a dataset's training sequences (PALR / TALLRec / GenRec tasks).

``run_finetune`` is the whole recipe, in order; the helpers it calls each do one thing:
examples (examples.py) -> a trainable copy of the base model with a fresh LoRA -> AdamW ->
resume state -> validation before -> the training loop -> validation after -> atomic save ->
register the adapter with the running service.

Why a copy of the base model: the app keeps serving recommendations from the shared base model
(with its adapters switched in place) while a fine-tune runs. Training on ``copy.deepcopy`` of
the base weights never changes which adapter is active there and never needs the service lock
except for the copy itself. For SmolLM2-135M on CPU the copy costs ~0.5 GB and a second; for a
7B model on a GPU it costs another ~13.5 GB (bf16) of GPU memory: set ``copy_base=False`` (the
CLI does, since it owns its model) when memory is short and nothing else uses the model.

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

from recdemo.config import FinetuneConfig
from recdemo.finetune import checkpoint as ckpt
from recdemo.finetune.examples import ExampleBuilder, check_tasks
from recdemo.finetune.lora import add_lora, load_lora_weights, make_accelerator, trainable_base
from recdemo.finetune.validate import Cancelled, answer_loss, check_cancel, example_loss, finite, ranking_metrics

# Spec fields that change what is trained: a partial run resumes only if all of them match.
TRAINING_FIELDS = ("tasks", "steps", "examples", "batch_size", "micro_batch_size", "lora_r", "lora_alpha",
                   "lora_dropout", "lora_targets", "lr", "warmup_steps", "min_lr_ratio", "weight_decay",
                   "grad_clip", "max_length", "max_history", "n_candidates", "with_attributes", "seed",
                   "init_adapter", "eval_candidates", "rank_sasrec_weight")


@dataclass
class FineTuneSpec(FinetuneConfig):
    """One fine-tune run: FinetuneConfig's fields (every default written there), checked."""

    def __post_init__(self):
        self.tasks = check_tasks(self.tasks)
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch size must be at least 1")
        if not self.out:
            raise ValueError("say where to write the adapter (out), e.g. checkpoints/adapters/movielens-small")

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


def _emit(progress, **event) -> None:
    if progress is not None:
        progress(event)


def run_finetune(spec: FineTuneSpec, dataset, service, retriever=None, progress=None,
                 cancel: threading.Event | None = None) -> dict:
    """Fine-tune a LoRA adapter (fresh, or ``spec.init_adapter``'s) on ``dataset``; save it to ``spec.out``.

    Returns {"status": "done", "adapter", "path", "metrics_before", "metrics_after", ...}, or
    {"status": "cancelled", "step", "reason"} when ``cancel`` was set (nothing at ``out`` changes).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out = Path(spec.out)
    name = out.name
    llm = service.llm
    tok = llm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    fingerprint = spec.fingerprint(dataset.content_hash, llm.name)
    _emit(progress, step=0, total=spec.steps, phase="building examples", loss=None, eta_s=None, metrics={})

    # 1. Examples: training from train_sequences() only; validation from eval_cases("valid").
    builder = ExampleBuilder(dataset, tok, retriever, max_history=spec.max_history,
                             n_candidates=spec.n_candidates, with_attributes=spec.with_attributes,
                             rank_candidates=spec.eval_candidates)
    train, dropped = builder.encode_all(builder.training_examples(spec.tasks, spec.n_examples, spec.seed),
                                        spec.max_length)
    if not train:
        raise ValueError(f"no training example fits in max_length={spec.max_length} tokens; raise --max-length")
    cases = dataset.eval_cases("valid")
    pick = np.random.default_rng(spec.seed).permutation(len(cases))[: spec.eval_users]
    val_cases = [cases[i] for i in sorted(pick)]
    val, _ = builder.encode_all(builder.validation_examples(spec.tasks, val_cases, spec.seed), spec.max_length)

    # 2. Model: a fresh (or init_adapter's) LoRA on (a copy of) the base; the seed fixes LoRA init and dropout.
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    base = trainable_base(service, spec.copy_base)
    if spec.gradient_checkpointing:  # a 7B model's activations at long sequences outgrow the GPU
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora(base, spec)
    if spec.init_adapter:
        load_lora_weights(model, spec.init_adapter, llm.name)
    accelerator = make_accelerator(llm.device)
    if "rank" in spec.tasks and accelerator.num_processes > 1:
        # rank_loss runs the decoder inside the peft model directly, past the DDP wrapper's forward
        raise ValueError("the fine-tuning task 'rank' runs on one device; launch it without accelerate")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)

    # 3. Resume: adapter weights, optimizer moments, RNG state and step from <out>.partial.
    step, losses, metrics_before, history = 0, [], None, []
    saved = ckpt.load_partial(out) if spec.resume else None
    if saved is not None and saved[3].get("fingerprint") == fingerprint:
        from peft import set_peft_model_state_dict
        lora, optim_state, rng, state = saved
        set_peft_model_state_dict(model, lora)
        optimizer.load_state_dict(optim_state)
        ckpt.restore_rng(rng)
        step, losses = int(state["step"]), list(state.get("losses", []))
        metrics_before, history = state.get("metrics_before"), list(state.get("history", []))
        print(f"resuming {name} from step {step}/{spec.steps} ({ckpt.partial_dir(out)})")
    elif saved is not None:
        print(f"note: {ckpt.partial_dir(out)} belongs to a different run (settings or data changed); starting over")
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    main = accelerator.is_main_process
    raw = accelerator.unwrap_model(model)

    # Each step takes batch_size examples in a fixed shuffled order (a pure function of the step,
    # so a resumed run sees exactly the examples the uninterrupted run would have seen).
    micro = spec.micro_batch_size or (1 if device.type == "cpu" else 4)
    local = max(1, spec.batch_size // accelerator.num_processes)
    accum = max(1, math.ceil(local / micro))
    order = {}

    def step_examples(s: int) -> list[dict]:
        picked = []
        for j in range(s * spec.batch_size, (s + 1) * spec.batch_size):
            epoch, pos = divmod(j, len(train))
            if epoch not in order:
                order[epoch] = np.random.default_rng(spec.seed + epoch).permutation(len(train))
            picked.append(train[order[epoch][pos]])
        return picked[accelerator.process_index::accelerator.num_processes][:local]

    def evaluate(full: bool) -> dict:
        metrics = answer_loss(raw, val, pad_id, device, cancel, spec.rank_sasrec_weight) if val else {}
        if full and spec.rank_eval and {"recommend", "recommend_retrieval", "sequence", "rank"} & set(spec.tasks):
            metrics.update(ranking_metrics(raw, builder, val_cases, retriever, spec.eval_candidates,
                                           seed=spec.seed, cancel=cancel, device=device, llm_name=llm.name))
        return finite(metrics)

    def save_partial(at_step: int, rng_state) -> None:
        if main:
            from peft import get_peft_model_state_dict
            ckpt.save_partial(out, get_peft_model_state_dict(raw), optimizer.state_dict(),
                              {"step": at_step, "fingerprint": fingerprint, "losses": losses,
                               "metrics_before": metrics_before, "history": history,
                               "spec": asdict(spec)}, rng_state)

    rng_state = torch.get_rng_state()
    tokens, t_loop = 0, None
    try:
        # 4. Validation before training (the fresh LoRA is a no-op: this is the base model).
        if metrics_before is None and main:
            _emit(progress, step=step, total=spec.steps, phase="evaluating the base model", loss=None,
                  eta_s=None, metrics={})
            metrics_before = evaluate(full=True)
            history.append({"step": 0, **metrics_before})
            _emit(progress, step=step, total=spec.steps, phase="evaluated", loss=None, eta_s=None,
                  metrics=metrics_before)

        # 5. The loop: accumulate micro-batch gradients, clip, AdamW step, report, evaluate, save.
        model.train()
        bar = tqdm(total=spec.steps, initial=step, desc=f"finetune {name}", disable=not main, unit="step")
        t_loop, first_step = time.perf_counter(), step
        while step < spec.steps:
            check_cancel(cancel)
            lr = lr_at(step, spec)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch_examples = step_examples(step)
            step_loss = 0.0
            for m in range(accum):
                check_cancel(cancel)  # a CPU step takes seconds: also check between micro-batches
                part = batch_examples[m * micro:(m + 1) * micro]
                if not part:
                    break
                # Gradients sync across GPUs only on the last micro-batch (no_sync is a no-op on 1 device).
                sync = nullcontext() if m == accum - 1 else accelerator.no_sync(model)
                with sync:
                    loss, n_tokens = example_loss(model, part, pad_id, device, spec.rank_sasrec_weight)
                    loss = loss / accum  # mean over micro-batches
                    accelerator.backward(loss)
                step_loss += loss.detach().item()
                tokens += n_tokens
            if spec.grad_clip:
                accelerator.clip_grad_norm_(params, spec.grad_clip)  # LoRA on tiny batches can spike
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            rng_state = torch.get_rng_state()  # at this step boundary: what a resume restores
            losses.append([step, step_loss])

            elapsed = time.perf_counter() - t_loop
            eta = elapsed / (step - first_step) * (spec.steps - step)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}")
            _emit(progress, step=step, total=spec.steps, loss=step_loss, eta_s=eta, phase="training",
                  metrics={}, lr=lr)
            if step < spec.steps and spec.eval_every and step % spec.eval_every == 0:
                if main:
                    metrics = evaluate(full=False)
                    history.append({"step": step, **metrics})
                    bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                           if isinstance(v, float)))
                    _emit(progress, step=step, total=spec.steps, loss=step_loss, eta_s=eta, phase="evaluated",
                          metrics=metrics)
                    save_partial(step, rng_state)
                accelerator.wait_for_everyone()
                model.train()
        bar.close()
        train_seconds = time.perf_counter() - t_loop

        # 6. Validation after, then the atomic save (the previous adapter stays until the rename).
        metrics_after = {}
        if main:
            _emit(progress, step=step, total=spec.steps, phase="evaluating the fine-tuned model", loss=None,
                  eta_s=None, metrics={})
            metrics_after = evaluate(full=True)
            history.append({"step": step, **metrics_after})
            check_cancel(cancel)
            _emit(progress, step=step, total=spec.steps, phase="saving", loss=None, eta_s=None,
                  metrics=metrics_after)
            meta = {"base_model": llm.name, "tasks": list(spec.tasks), "dataset": dataset.name,
                    "dataset_hash": dataset.content_hash, "steps": step, "metrics": metrics_after,
                    "metrics_before": metrics_before, "history": history,
                    "seconds": round(time.perf_counter() - start, 1),
                    "train_seconds": round(train_seconds, 1),
                    "tokens_per_s": round(tokens / max(train_seconds, 1e-9), 1),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "lora": {"r": spec.lora_r, "alpha": spec.lora_alpha or 2 * spec.lora_r,
                             "dropout": spec.lora_dropout, "targets": spec.lora_targets},
                    "examples": len(train), "examples_dropped": dropped, "batch_size": spec.batch_size,
                    "lr": spec.lr, "max_length": spec.max_length, "n_candidates": spec.n_candidates,
                    "with_attributes": spec.with_attributes, "max_history": spec.max_history,
                    "eval_users": len(val_cases), "seed": spec.seed, "init_adapter": spec.init_adapter or None,
                    "rank_sasrec_weight": spec.rank_sasrec_weight}
            if "fusion_weight" in metrics_after:  # chosen on these validation users (fusion.select_weight)
                meta["fusion"] = {"score": metrics_after["fusion_weight"]}
            ckpt.save_adapter(out, raw, meta)
            ckpt.clear_partial(out)
        accelerator.wait_for_everyone()
    except (Cancelled, KeyboardInterrupt) as stop:
        # Keep what was learned up to the last finished step, so `--resume` (the CLI default) goes on.
        if t_loop is not None and step > 0:
            save_partial(step, rng_state)
        if isinstance(stop, KeyboardInterrupt):
            raise
        _emit(progress, step=step, total=spec.steps, phase="cancelled", loss=None, eta_s=None, metrics={})
        return {"status": "cancelled", "step": step,
                "reason": f"cancelled at step {step}/{spec.steps}; the previous adapter is unchanged"}
    finally:
        del model, raw, optimizer  # the copy's memory goes back before the app carries on

    path = str(out)
    if main and hasattr(service, "register_adapter"):
        try:
            service.register_adapter(path)
        except Exception as e:  # noqa: BLE001 - the adapter is saved; loading it is the app's business
            print(f"warning: saved {path} but could not load it into the running model: {e}")
    result = {"status": "done", "adapter": name, "path": path, "metrics_before": metrics_before,
              "metrics_after": metrics_after, "steps": step, "examples": len(train),
              "examples_dropped": dropped, "seconds": round(time.perf_counter() - start, 1),
              "tokens_per_s": round(tokens / max(train_seconds, 1e-9), 1)}
    _emit(progress, step=step, total=spec.steps, phase="done", loss=None, eta_s=0.0, metrics=metrics_after)
    return result
