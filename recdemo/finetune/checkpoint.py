"""Saving fine-tune results safely: the final adapter folder and the resumable partial state.

Both are written to a temporary folder next to the target and then renamed into place, so a
crash, Ctrl-C or cancel at any moment leaves either the old folder or the new one, never a mix.
Only safetensors + JSON are written and read (no torch.save / pickle): the optimizer state is
flattened into named tensors plus a JSON file for its scalars and param groups.

Partial state (``<out>.partial/``, no adapter_config.json so nobody mistakes it for an adapter):
  lora.safetensors       trainable LoRA weights (peft state dict)
  optimizer.safetensors  "state.<param id>.<key>" tensors + "rng.*" random generator states
  state.json             step, run fingerprint, optimizer scalars/param groups, losses, metrics so far
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from recdemo.storage import recover_dir, write_dir_atomically

PARTIAL_SUFFIX = ".partial"
STATE_FILE, LORA_FILE, OPTIM_FILE = "state.json", "lora.safetensors", "optimizer.safetensors"


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / (out.name + PARTIAL_SUFFIX)


# -- optimizer state <-> (tensors, JSON) --
def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in state_dict["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_tensors(cpu_state: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    out = {"rng.torch": (cpu_state if cpu_state is not None else torch.get_rng_state()).clone()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s.clone()
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# -- partial (resumable) state --
def save_partial(out: str | Path, lora_state: dict[str, torch.Tensor], optimizer_state: dict,
                 state: dict, rng_state: torch.Tensor | None = None) -> Path:
    tensors, optim_meta = flatten_optimizer(optimizer_state)
    tensors.update(rng_tensors(rng_state))
    lora = {k: v.detach().to("cpu").contiguous().clone() for k, v in lora_state.items()}

    def write(tmp: Path) -> None:
        save_file(lora, str(tmp / LORA_FILE))
        save_file(tensors, str(tmp / OPTIM_FILE))
        (tmp / STATE_FILE).write_text(json.dumps({**state, "optimizer": optim_meta}, indent=1))

    return write_dir_atomically(partial_dir(out), write)


def load_partial(out: str | Path) -> tuple[dict, dict, dict, dict] | None:
    """(lora tensors, optimizer state dict, rng tensors, state) or None when nothing usable is there."""
    folder = partial_dir(out)
    recover_dir(folder)
    files = [folder / STATE_FILE, folder / LORA_FILE, folder / OPTIM_FILE]
    if not all(f.is_file() for f in files):
        return None
    try:
        state = json.loads(files[0].read_text())
        lora = load_file(str(files[1]))
        optim_tensors = load_file(str(files[2]))
    except (OSError, ValueError) as e:  # a damaged partial is not worth a crash: start over
        print(f"warning: ignoring unreadable resume state in {folder} ({e})")
        return None
    rng = {k: v for k, v in optim_tensors.items() if k.startswith("rng.")}
    optim = unflatten_optimizer(optim_tensors, state.pop("optimizer"))
    return lora, optim, rng, state


def clear_partial(out: str | Path) -> None:
    shutil.rmtree(partial_dir(out), ignore_errors=True)


# -- final adapter --
def store_half(weights: str | Path) -> None:
    """Rewrite a safetensors file with its float tensors in float16: half the file to ship. LoRA
    factors are small numbers well inside fp16's range, and ``AdapterManager`` casts them to the
    model's dtype on load, so rankings do not move (float16 keeps 3 more mantissa bits than bfloat16)."""
    tensors = load_file(str(weights))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()},
              str(weights), metadata={"format": "pt"})


def save_adapter(out: str | Path, peft_model, meta: dict, adapter: str = "default") -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` (peft, float16) + ``meta.json`` of the
    peft model's LoRA ``adapter``, atomically."""
    def write(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp), safe_serialization=True, selected_adapters=[adapter])
        if adapter != "default":  # peft writes any other adapter into a subfolder named after it
            for f in (tmp / adapter).iterdir():
                f.rename(tmp / f.name)
            (tmp / adapter).rmdir()
        if not (tmp / "adapter_model.safetensors").is_file():
            raise RuntimeError(f"peft did not write adapter_model.safetensors into {tmp}")
        store_half(tmp / "adapter_model.safetensors")
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card: meta.json says it all
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    return write_dir_atomically(out, write)
