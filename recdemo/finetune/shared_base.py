"""Where a fine-tune's LoRA lives while the app keeps serving: on the served model, or on a copy.

- ``SharedBase`` (``share_base="share"``; "auto" on CUDA): the LoRA is one more adapter of the
  service's ``AdapterManager`` on the served model, whose frozen base weights it shares (a 7B
  model: no second 13.5 GB copy). Every training micro-batch (forward + backward), optimizer step
  and evaluation runs inside ``hold(...)``: the service lock, the training adapter alone active.
  Requests run between them with their own adapter; the training adapter is never what a request
  gets (``AdapterManager.active`` never names it) and ``release`` removes it, whatever happened.
- ``OwnBase`` (``share_base="copy"``; "auto" on CPU): the LoRA on ``copy.deepcopy`` of the base,
  stripped of the app's adapters; training never takes the lock, so a CPU step of seconds never
  stalls a request. With ``copy=False`` (several accelerate processes: each owns its model) the
  LoRA goes on the served model itself, stripped of its adapters.

Both give the same adapter for the same seed (the LoRA factors are drawn in the same module
order, the steps see the same examples and dropout draws): tests/finetune/test_shared_base.py.
"""
from __future__ import annotations

from contextlib import contextmanager

from recdemo.finetune.lora import add_lora, lora_config, lora_errors, trainable_base

GC_KWARGS = {"use_reentrant": False}


class OwnBase:
    """The LoRA on the trainer's own model: a copy of the served base (or, with ``copy=False``, the
    served base itself, for a process that owns it)."""
    shared = False
    adapter = "default"  # peft's name for a model's only adapter

    def __init__(self, service, spec, copy: bool = True):
        base = trainable_base(service, copy)
        if spec.gradient_checkpointing:  # a 7B model's activations at long sequences outgrow the GPU
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GC_KWARGS)
        self.model = add_lora(base, spec)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    @contextmanager
    def hold(self, train: bool):
        self.model.train(train)
        yield self.model

    def release(self) -> None:
        self.model, self.params = None, []


class SharedBase:
    """The LoRA as one more (never served) adapter on the service's model; see the module doc."""
    shared = True

    def __init__(self, service, spec):
        self.service, self.gc = service, spec.gradient_checkpointing
        with service.lock:
            manager = service.adapters
            with lora_errors(spec):
                self.adapter = manager.add_training(lora_config(spec))
            self.model = manager.peft
            self.params = manager.training_params(self.adapter)

    @contextmanager
    def hold(self, train: bool):
        """The service lock, with the training adapter alone active, in train (or eval) mode."""
        with self.service.lock, self.service.adapters.run_training(self.adapter, train) as model:
            base = self.service.llm.model
            checkpointing = self.gc and train
            if checkpointing:  # only while this adapter trains: serving never recomputes anything
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GC_KWARGS)
            try:
                yield model
            finally:
                if checkpointing:
                    base.gradient_checkpointing_disable()
                    base.disable_input_require_grads()

    def release(self) -> None:
        """Remove the training adapter from the served model (after a save, a cancel or an error)."""
        if self.model is not None:
            with self.service.lock:
                self.service.adapters.drop_training(self.adapter)
        self.model, self.params = None, []
