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
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

PARTIAL_SUFFIX = ".partial"
STATE_FILE, LORA_FILE, OPTIM_FILE = "state.json", "lora.safetensors", "optimizer.safetensors"


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / (out.name + PARTIAL_SUFFIX)


def write_dir_atomically(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temp folder beside ``target``, then swap it into place.

    The old folder is renamed aside first (a non-empty folder cannot be replaced in one rename)
    and deleted only once the new one is in place; if anything fails, the old one is put back."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old = None
    try:
        write(tmp)
        _readable(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; an adapter folder is ordinary readable data."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o644)


def recover_dir(target: str | Path) -> None:
    """A crash between the two renames above leaves only ``.<name>.old-*``: put it back."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], target)


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


def save_adapter(out: str | Path, peft_model, meta: dict) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` (peft, float16) + ``meta.json``, atomically."""
    def write(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        if not (tmp / "adapter_model.safetensors").is_file():
            raise RuntimeError(f"peft did not write adapter_model.safetensors into {tmp}")
        store_half(tmp / "adapter_model.safetensors")
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card: meta.json says it all
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    return write_dir_atomically(out, write)
