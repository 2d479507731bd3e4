"""AdapterManager: LoRA adapters loaded, switched and disabled on one base model, in place."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_adapter, make_tiny_llm

from recdemo.llm.adapters import AdapterManager, same_base
from recdemo.errors import ModelNotFound


def logits(llm, ids=(5, 9, 17, 3, 40)):
    with torch.inference_mode():
        return llm.model(torch.tensor([list(ids)])).logits[0, -1].clone()


def base_weights(llm):
    """The base model's own parameters (LoRA matrices excluded), by their original names."""
    out = {}
    for name, p in llm.model.named_parameters():
        if "lora_" in name:
            continue
        out[name.replace("base_layer.", "")] = p.detach().clone()
    return out


def test_switch_on_off_and_between_adapters_without_touching_the_base(tiny_llm, tmp_path):
    make_tiny_adapter(tiny_llm, tmp_path / "a", seed=1)
    make_tiny_adapter(tiny_llm, tmp_path / "b", seed=2)
    before_w = base_weights(tiny_llm)
    base = logits(tiny_llm)
    mgr = AdapterManager(tiny_llm, tmp_path)
    assert mgr.available() == ["a", "b"]

    mgr.activate("a")
    with_a = logits(tiny_llm)
    mgr.activate("b")
    with_b = logits(tiny_llm)
    mgr.activate(None)
    off = logits(tiny_llm)
    mgr.activate("a")
    again_a = logits(tiny_llm)

    assert not torch.allclose(with_a, base, atol=1e-4)  # the adapter changes the output
    assert not torch.allclose(with_a, with_b, atol=1e-4)  # two adapters differ
    assert torch.allclose(off, base, atol=1e-6)  # disabled: exactly the base model again
    assert torch.allclose(again_a, with_a, atol=1e-6)  # switching back is reproducible
    after_w = base_weights(tiny_llm)
    assert before_w.keys() == after_w.keys()
    assert all(torch.equal(before_w[k], after_w[k]) for k in before_w)  # base weights untouched
    assert mgr.peft is not None and len(mgr.loaded) == 2  # one PeftModel, two adapters


def test_missing_adapter_says_how_to_make_it(tiny_llm, tmp_path):
    mgr = AdapterManager(tiny_llm, tmp_path)
    with pytest.raises(ModelNotFound, match="there: none.*finetune --dataset movielens-small "
                       "--out checkpoints/adapters/movielens-small-score"):
        mgr.activate("movielens-small-score")
    with pytest.raises(ModelNotFound, match="--dataset NAME --out checkpoints/adapters/mine"):
        mgr.activate("mine")


def test_adapter_for_another_base_model_is_refused(tiny_llm, tmp_path):
    make_tiny_adapter(tiny_llm, tmp_path / "other", base_model="meta-llama/Llama-2-7b-hf")
    mgr = AdapterManager(tiny_llm, tmp_path)
    with pytest.raises(ModelNotFound, match="Llama-2-7b-hf.*tiny-llama"):
        mgr.activate("other")
    assert mgr.loaded == {}


def test_only_safetensors_adapters_are_loaded(tiny_llm, tmp_path):
    folder = make_tiny_adapter(tiny_llm, tmp_path / "pickled")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    mgr = AdapterManager(tiny_llm, tmp_path)
    assert mgr.available() == []
    with pytest.raises(ModelNotFound, match="only safetensors"):
        mgr.load("pickled")


def test_adapter_that_does_not_fit_the_model_is_a_clear_error(tiny_llm, tmp_path):
    folder = make_tiny_adapter(tiny_llm, tmp_path / "bad")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["target_modules"] = ["no_such_module"]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    mgr = AdapterManager(tiny_llm, tmp_path)
    with pytest.raises(ModelNotFound, match="does not fit"):
        mgr.load("bad")


def test_reload_replaces_a_retrained_adapter(tiny_llm, tmp_path):
    make_tiny_adapter(tiny_llm, tmp_path / "a", seed=1)
    mgr = AdapterManager(tiny_llm, tmp_path)
    mgr.activate("a")
    first = logits(tiny_llm)
    fresh_base = make_tiny_llm(tiny_llm.tokenizer)  # same weights as tiny_llm, without LoRA layers
    make_tiny_adapter(fresh_base, tmp_path / "a", seed=7)  # a new fine-tune wrote the same folder
    mgr.register(tmp_path / "a")
    assert mgr.active == "a"
    second = logits(tiny_llm)
    assert not torch.allclose(first, second, atol=1e-4)
    assert len(mgr.peft.peft_config) == 1  # the old copy was deleted


def test_same_base_names():
    assert same_base("smollm2-135m", "/x/.cache/models/smollm2-135m/")
    assert same_base("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m")
    assert not same_base("meta-llama/Llama-2-7b-hf", "smollm2-135m")


def test_adapter_saved_in_float16_loads_and_ranks_like_the_float32_one(tiny_llm, tmp_path):
    import struct

    from recdemo.finetune.checkpoint import store_half
    make_tiny_adapter(tiny_llm, tmp_path / "full", seed=3)
    make_tiny_adapter(tiny_llm, tmp_path / "half", seed=3)  # also a name that is an nn.Module attribute
    weights = tmp_path / "half" / "adapter_model.safetensors"
    store_half(weights)
    with open(weights, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    assert weights.stat().st_size < 0.65 * (tmp_path / "full" / "adapter_model.safetensors").stat().st_size
    mgr = AdapterManager(tiny_llm, tmp_path)
    mgr.activate("full")
    full = logits(tiny_llm)
    mgr.activate("half")
    half = logits(tiny_llm)
    assert next(p for n, p in tiny_llm.model.named_parameters() if "lora_A" in n).dtype == torch.float32
    assert torch.allclose(full, half, atol=1e-2) and torch.equal(full.topk(5).indices, half.topk(5).indices)


def test_adapter_in_a_bfloat16_model_runs_in_bfloat16(tiny_tokenizer, tmp_path):
    full = make_tiny_llm(tiny_tokenizer)
    make_tiny_adapter(full, tmp_path / "a", seed=3)
    AdapterManager(full, tmp_path).activate("a")
    half = make_tiny_llm(tiny_tokenizer)
    half.model.to(torch.bfloat16)
    half.dtype = torch.bfloat16
    AdapterManager(half, tmp_path).activate("a")
    assert {p.dtype for n, p in half.model.named_parameters() if "lora_" in n} == {torch.bfloat16}
    expected, got = logits(full), logits(half).float()
    assert torch.equal(expected.topk(3).indices, got.topk(3).indices)


@pytest.mark.parametrize("requested", ["/etc", "/no/such/dir", "../x", "a/b", "~/adapters/a", ".", "a\\b", ""])
def test_an_adapter_is_a_name_never_a_path(tiny_llm, tmp_path, requested):
    """Defect 6: a path is refused before anything on disk is looked at, in one sentence that
    repeats no path of this machine; an absolute path to a real adapter is never loaded."""
    mgr = AdapterManager(tiny_llm, tmp_path / "adapters")
    with pytest.raises(ModelNotFound) as e:
        mgr.activate(requested)
    msg = str(e.value)
    assert "never by a path" in msg and str(tmp_path) not in msg and msg.count(". ") == 0
    assert mgr.loaded == {} and mgr.peft is None


def test_an_absolute_path_to_a_real_adapter_is_not_loaded(tiny_llm, tmp_path):
    folder = make_tiny_adapter(tiny_llm, tmp_path / "elsewhere" / "real")
    mgr = AdapterManager(tiny_llm, tmp_path / "adapters")
    with pytest.raises(ModelNotFound, match="never by a path"):
        mgr.load(str(folder))
    assert mgr.loaded == {} and mgr.peft is None
    assert mgr.register(folder) == "real"  # the program's own folders (a fine-tune's output) still load


def test_a_missing_adapter_names_no_server_path(tiny_llm, tmp_path):
    make_tiny_adapter(tiny_llm, tmp_path / "adapters" / "there")
    (tmp_path / "adapters" / "broken").mkdir()
    mgr = AdapterManager(tiny_llm, tmp_path / "adapters")
    for name in ("missing", "broken"):
        with pytest.raises(ModelNotFound) as e:
            mgr.load(name)
        assert str(tmp_path) not in str(e.value) and repr(name) in str(e.value)


def test_unload_frees_an_adapter_and_the_others_keep_working(tiny_llm, tmp_path):
    make_tiny_adapter(tiny_llm, tmp_path / "a", seed=1)
    make_tiny_adapter(tiny_llm, tmp_path / "b", seed=2)
    make_tiny_adapter(tiny_llm, tmp_path / "c", seed=3)
    base = logits(tiny_llm)
    mgr = AdapterManager(tiny_llm, tmp_path)
    mgr.activate("b")
    with_b = logits(tiny_llm)
    mgr.activate("a")
    assert mgr.unload("a") and mgr.active is None  # the active one: back to the base model
    assert torch.allclose(logits(tiny_llm), base, atol=1e-6)
    assert list(mgr.loaded) == ["b"] and len(mgr.peft.peft_config) == 1
    mgr.activate("b")
    assert torch.allclose(logits(tiny_llm), with_b, atol=1e-6)
    assert mgr.unload("b") and not mgr.unload("b")  # the last one too
    assert torch.allclose(logits(tiny_llm), base, atol=1e-6)
    mgr.activate("c")  # loading after everything was unloaded still works
    assert not torch.allclose(logits(tiny_llm), base, atol=1e-4)
    mgr.activate(None)
    assert torch.allclose(logits(tiny_llm), base, atol=1e-6)
