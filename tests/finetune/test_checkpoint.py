"""Optimizer state round trips (safetensors + JSON, no pickle) and the partial/final adapter folders."""
from __future__ import annotations

import torch

from recdemo.finetune import checkpoint as ckpt


def test_optimizer_state_round_trips_through_tensors_and_json(tmp_path):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.8, 0.95))
    for _ in range(3):
        sum((p ** 2).sum() for p in params).backward()
        opt.step()
        opt.zero_grad()
    lora = {"a": torch.ones(2, 2)}
    ckpt.save_partial(tmp_path / "out", lora, opt.state_dict(), {"step": 3, "fingerprint": "f"})
    assert not (tmp_path / "out.partial" / "adapter_config.json").exists()
    loaded_lora, optim_state, rng, state = ckpt.load_partial(tmp_path / "out")
    assert state["step"] == 3 and torch.equal(loaded_lora["a"], lora["a"]) and "rng.torch" in rng
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1.0)
    fresh.load_state_dict(optim_state)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for key, value in a["state"][pid].items():
            assert torch.equal(value, b["state"][pid][key]), key


def test_missing_or_damaged_partial_is_ignored(tmp_path):
    assert ckpt.load_partial(tmp_path / "none") is None
    part = tmp_path / "bad.partial"
    part.mkdir()
    for name in (ckpt.STATE_FILE, ckpt.LORA_FILE, ckpt.OPTIM_FILE):
        (part / name).write_bytes(b"garbage")
    assert ckpt.load_partial(tmp_path / "bad") is None
