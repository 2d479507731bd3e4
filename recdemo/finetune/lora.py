"""The trainable model for fine-tuning: a LoRA on (a copy of) the shared base, and accelerate.

See loop.py for why the base model is copied by default.
"""
from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

from recdemo.llm.adapters import CONFIG_FILE, WEIGHTS_FILE, is_adapter_dir, read_meta, same_base, trained_base


def trainable_base(service, copy_base: bool):
    """The service's base model, copied (default) and stripped of any LoRA layers the app injected."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    with service.lock:  # nobody may run a forward (or switch adapters) while we copy
        model = service.llm.model
        model = copy.deepcopy(model) if copy_base else model
    if isinstance(model, PeftModel):
        model = model.base_model.model
    parents = [(m, name, child) for m in model.modules() for name, child in m.named_children()]
    for parent, name, child in parents:
        if isinstance(child, BaseTunerLayer):
            setattr(parent, name, child.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in model.__dict__:
            delattr(model, attr)
    return model


def add_lora(model, spec):
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if spec.lora_targets == "all-linear" else [
        t.strip() for t in spec.lora_targets.split(",") if t.strip()]
    config = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha or 2 * spec.lora_r,
                        lora_dropout=spec.lora_dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. a target module name the model does not have
        raise ValueError(f"cannot add LoRA to modules {spec.lora_targets!r}: {str(e).splitlines()[0]}") from e


def load_lora_weights(model, folder: str | Path, base_name: str) -> None:
    """Overwrite the fresh LoRA factors with an existing adapter's, to train it further (e.g. more
    steps on new history windows). Its LoRA layout must match: same r, alpha and target modules."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_adapter_dir(folder):
        raise ValueError(f"init adapter {folder}: no {CONFIG_FILE} + {WEIGHTS_FILE} there (not an adapter folder)")
    theirs, ours = json.loads((folder / CONFIG_FILE).read_text()), next(iter(model.peft_config.values()))
    if (theirs.get("r"), theirs.get("lora_alpha")) != (ours.r, ours.lora_alpha):
        raise ValueError(f"init adapter {folder} has r={theirs.get('r')}, alpha={theirs.get('lora_alpha')}; "
                         f"this run has r={ours.r}, alpha={ours.lora_alpha}: use its --lora-r and --lora-alpha")
    trained_on = trained_base(folder, read_meta(folder))
    if trained_on and not same_base(trained_on, base_name):
        raise ValueError(f"init adapter {folder} was trained on {trained_on!r}, not on {base_name!r}")
    try:
        result = set_peft_model_state_dict(model, load_file(str(folder / WEIGHTS_FILE)))
    except RuntimeError as e:  # shape mismatch: another base model size
        raise ValueError(f"init adapter {folder} does not fit this model ({str(e).splitlines()[0][:200]})") from e
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"init adapter {folder} has LoRA layers on other modules than --lora-targets "
                         f"({len(result.unexpected_keys)} extra, {len(missing)} missing); use its --lora-targets")


def make_accelerator(device: torch.device):
    try:
        from accelerate import Accelerator
    except ImportError:  # accelerate is optional at run time: plain single-device training
        return SimpleNamespace(device=device, is_main_process=True, num_processes=1, process_index=0,
                               prepare=lambda *xs: xs, backward=lambda loss: loss.backward(),
                               no_sync=lambda m: nullcontext(), unwrap_model=lambda m: m,
                               wait_for_everyone=lambda: None,
                               clip_grad_norm_=torch.nn.utils.clip_grad_norm_)
    return Accelerator(cpu=device.type == "cpu")
