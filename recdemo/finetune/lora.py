"""The trainable model for fine-tuning: a LoRA on (a copy of) the shared base, and accelerate.

See loop.py for why the base model is copied by default.
"""
from __future__ import annotations

import copy
import json
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

from recdemo.llm.adapters import (CONFIG_FILE, WEIGHTS_FILE, is_adapter_dir, read_meta, same_base, strip_lora_layers,
                                  trained_base)


def shares_base(share_base: str, device: torch.device) -> bool:
    """Whether a run trains its LoRA on the served model itself ("share") or on a copy ("copy").
    "auto": share on CUDA, where a 7B copy costs another 13.5 GB; copy on CPU, where a step takes
    seconds and holding the service lock that long would stall the demo's requests."""
    if share_base == "auto":
        return torch.device(device).type == "cuda"
    return share_base == "share"


def trainable_base(service, copy_base: bool):
    """The service's base model, copied (default) and stripped of any LoRA layers the app injected."""
    from peft import PeftModel

    with service.lock:  # nobody may run a forward (or switch adapters) while we copy
        model = service.llm.model
        model = copy.deepcopy(model) if copy_base else model
    if isinstance(model, PeftModel):
        model = model.base_model.model
    return strip_lora_layers(model)


def lora_config(spec):
    from peft import LoraConfig

    targets = "all-linear" if spec.lora_targets == "all-linear" else [
        t.strip() for t in spec.lora_targets.split(",") if t.strip()]
    return LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha or 2 * spec.lora_r,
                      lora_dropout=spec.lora_dropout, target_modules=targets, task_type="CAUSAL_LM")


@contextmanager
def lora_errors(spec):
    """peft's error for a target module the model lacks, as one sentence naming the setting."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"cannot add LoRA to modules {spec.lora_targets!r}: {str(e).splitlines()[0]}") from e


def add_lora(model, spec):
    from peft import get_peft_model

    with lora_errors(spec):
        return get_peft_model(model, lora_config(spec))


def load_lora_weights(model, folder: str | Path, base_name: str, adapter: str = "default") -> None:
    """Overwrite the fresh LoRA factors with an existing adapter's, to train it further (e.g. more
    steps on new history windows). Its LoRA layout must match: same r, alpha and target modules."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_adapter_dir(folder):
        raise ValueError(f"init adapter {folder}: no {CONFIG_FILE} + {WEIGHTS_FILE} there (not an adapter folder)")
    theirs, ours = json.loads((folder / CONFIG_FILE).read_text()), model.peft_config[adapter]
    if (theirs.get("r"), theirs.get("lora_alpha")) != (ours.r, ours.lora_alpha):
        raise ValueError(f"init adapter {folder} has r={theirs.get('r')}, alpha={theirs.get('lora_alpha')}; "
                         f"this run has r={ours.r}, alpha={ours.lora_alpha}: use its --lora-r and --lora-alpha")
    trained_on = trained_base(folder, read_meta(folder))
    if trained_on and not same_base(trained_on, base_name):
        raise ValueError(f"init adapter {folder} was trained on {trained_on!r}, not on {base_name!r}")
    try:
        result = set_peft_model_state_dict(model, load_file(str(folder / WEIGHTS_FILE)), adapter_name=adapter)
    except RuntimeError as e:  # shape mismatch: another base model size
        raise ValueError(f"init adapter {folder} does not fit this model ({str(e).splitlines()[0][:200]})") from e
    missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter}." in k]
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
