"""The pieces bench/gpu.py measures with: the model, tokenizer, catalog, device helpers and arithmetic.

- ``build_model``: ``LlamaForCausalLM`` from a config, with random weights created directly on the
  target device in the target dtype (``torch.device(...)`` context + ``dtype=``), so a 7B model is
  never materialised in float32 on the CPU first. Attention: SDPA (flash / memory-efficient kernels).
- ``load_tokenizer``: the SmolLM2 tokenizer (vocab 49152; no LLaMA tokenizer can be downloaded here),
  with its chat template removed so prompts take the plain "### Instruction / ### Response" frame a
  base LLaMA-7B gets (prompts.render). The model's vocabulary is max(32000, len(tokenizer)).
- ``load_catalog``: the real movielens-small when the data root has it (real titles make realistic
  prompts), else a synthetic movie catalog generated here (no dataset text is stored in the repo).
- ``eval_dataset``: amazon-beauty from a data folder (``--eval-data``) for the batched evaluation of
  all its test users, else a synthetic one of its size (12,101 items, 22,332 users with 5-13 items).
- ``hash_text_index``: the project's TextIndex with a hashed-trigram encoder (the GPU machine has no
  sentence-transformers): the explanations' evidence without the MiniLM download.
- ``Dev``: synchronise, peak memory (CUDA only: CPU has no allocator statistics; None there).
- ``matmul_rate`` / ``copy_bandwidth``: measured bf16 matmul FLOP/s (fp32 on CPU) and memory bandwidth.
- ``Cost`` + ``CallLog``: FLOPs and weight bytes of the model calls a measurement actually made.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import recdemo  # noqa: E402,F401  (sets OpenMP defaults before torch loads: config.OPENMP_DEFAULTS)
import torch  # noqa: E402

# LLaMA-7B (Touvron et al. 2023): d=4096, 32 layers, 32 heads, MLP 11008, vocab 32000, RMSNorm eps 1e-6.
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, rms_norm_eps=1e-6)
LLAMA_VOCAB = 32000

GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
ADJECTIVES = ["Silent", "Crimson", "Broken", "Golden", "Last", "Hidden", "Wild", "Dark", "Lost", "Eternal",
              "Midnight", "Frozen", "Secret", "Burning", "Distant", "Final", "Little", "Iron", "Electric", "Quiet"]
NOUNS = ["River", "Harbor", "Kingdom", "Road", "Garden", "Witness", "Summer", "Empire", "Storm", "Island",
         "Promise", "Shadow", "Letter", "Mountain", "Game", "City", "Station", "Dancer", "Detective", "Frontier"]
SUFFIXES = ["", "", "", ": Part II", " of the North", " Returns", " and the Stranger", ", The"]


class Dev:
    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"

    def name(self) -> str:
        if self.cuda:
            return torch.cuda.get_device_name(self.device)
        import platform
        return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn):
        """(result, seconds) with the device synchronised on both sides."""
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def allocated_gb(self) -> float | None:
        return torch.cuda.memory_allocated(self.device) / 1e9 if self.cuda else None

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 1e9 if self.cuda else None

    def peak_reserved_gb(self) -> float | None:
        return torch.cuda.max_memory_reserved(self.device) / 1e9 if self.cuda else None


def load_tokenizer(path: str | None, cache_dir: str):
    """(tokenizer, where it came from). Default: the cached SmolLM2 folder (built by the project's
    loader from the embedded GGUF when missing)."""
    from transformers import AutoTokenizer

    from recdemo.errors import ModelNotFound
    from recdemo.llm.models import cached_embedded

    folder = Path(path) if path else Path(cache_dir) / "smollm2-135m"
    if not (folder / "tokenizer.json").is_file():
        if path:
            raise SystemExit(f"{folder} has no tokenizer.json")
        try:
            folder = cached_embedded("smollm2-135m", cache_dir)
        except ModelNotFound as e:
            raise SystemExit(f"no tokenizer: {e}. Pass --tokenizer FOLDER (any folder with tokenizer.json, "
                             "e.g. .cache/models/smollm2-135m copied from a machine that has it)")
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    tok.chat_template = None  # base LLaMA-7B has none: prompts use the instruction frame
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, str(folder)


def build_model(shape: dict, tokenizer, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=max(LLAMA_VOCAB, len(tokenizer)), max_position_embeddings=4096,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape)
    torch.manual_seed(seed)
    with torch.device(device):  # parameters are created on the device, in ``dtype``
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def synthetic_titles(n_items: int, rng) -> tuple[list[str], list[tuple]]:
    """Movie-like titles ("The Hidden Harbor Returns (1987)") with 1-3 genres each."""
    titles, seen = [], set()
    while len(titles) < n_items:
        t = (f"The {ADJECTIVES[rng.integers(len(ADJECTIVES))]} {NOUNS[rng.integers(len(NOUNS))]}"
             f"{SUFFIXES[rng.integers(len(SUFFIXES))]} ({1930 + int(rng.integers(90))})")
        if t not in seen:
            seen.add(t)
            titles.append(t)
    genres = [tuple(sorted(set(rng.choice(GENRES, size=int(rng.integers(1, 4)))))) for _ in range(n_items)]
    return titles, genres


def synthetic_dataset(n_items: int = 3000, n_users: int = 300, seed: int = 0):
    """Synthetic titles; each user leans to two genres and to popular items (Zipf); 30-150
    interactions per user, ratings 1-5."""
    from recdemo.data import Catalog, Dataset

    rng = np.random.default_rng(seed)
    titles, genres = synthetic_titles(n_items, rng)
    popularity = 1.0 / (1.0 + rng.permutation(n_items))
    catalog = Catalog(ids=[str(i + 1) for i in range(n_items)], titles=titles, attributes=genres,
                      attribute_name="genres")
    seqs, rates = [], []
    for _ in range(n_users):
        liked = set(rng.choice(GENRES, size=2, replace=False))
        p = popularity * np.array([1.0 + 4.0 * bool(liked & set(g)) for g in genres])
        n = int(rng.integers(30, 151))
        seqs.append(rng.choice(n_items, size=n, replace=False, p=p / p.sum()).astype(np.int64))
        rates.append(rng.integers(1, 6, size=n).astype(np.float32))
    return Dataset(name="synthetic-movies", catalog=catalog, users=[f"u{u}" for u in range(n_users)],
                   sequences=seqs, ratings=rates, source="generated by bench/gpu_setup.py")


def load_catalog(cfg, synthetic: bool):
    """(dataset, source): movielens-small from the data root when present, else synthetic."""
    if not synthetic:
        try:
            from recdemo.data import load_dataset
            return load_dataset("movielens-small", root=cfg.data.root), "movielens-small"
        except Exception as e:  # noqa: BLE001 - no data on this machine: a generated catalog will do
            print(f"note: movielens-small not readable under {cfg.data.root} ({str(e)[:100]}); "
                  "using a synthetic catalog", file=sys.stderr)
    return synthetic_dataset(), "synthetic"


# amazon-beauty (the project's 5-core copy): 12,101 items; 22,332 users have a test case (>= 3 items)
BEAUTY_SIZE = dict(n_items=12_101, n_users=22_332)


def synthetic_like(n_items: int, n_users: int, lengths=(5, 14), seed: int = 0):
    """A dataset of a real one's size: Zipf-popular items, ``lengths`` interactions per user (amazon-
    beauty's mean is ~9); titles as ``synthetic_titles`` (shorter than beauty's product names)."""
    from recdemo.data import Catalog, Dataset

    rng = np.random.default_rng(seed)
    titles, genres = synthetic_titles(n_items, rng)
    cdf = np.cumsum(1.0 / (1.0 + rng.permutation(n_items)))
    seqs = []
    for _ in range(n_users):
        n = int(rng.integers(*lengths))
        draw = np.searchsorted(cdf, rng.random(4 * n) * cdf[-1])  # with replacement, then first occurrences
        seqs.append(np.array(list(dict.fromkeys(draw.tolist()))[:n], dtype=np.int64))
    catalog = Catalog(ids=[str(i + 1) for i in range(n_items)], titles=titles, attributes=genres,
                      attribute_name="genres")
    return Dataset(name="synthetic-beauty-size", catalog=catalog, users=[f"u{u}" for u in range(n_users)],
                   sequences=seqs, ratings=[np.ones(len(q), dtype=np.float32) for q in seqs],
                   source="generated by bench/gpu_setup.py")


def eval_dataset(data_dir: str | None, tiny: bool):
    """(dataset, source) for the batched evaluation: amazon-beauty under ``data_dir``, else synthetic of
    its size (tiny: 300 items, 48 users)."""
    if data_dir:
        from recdemo.data import load_dataset
        return load_dataset("amazon-beauty", root=data_dir), "amazon-beauty"
    size = dict(n_items=300, n_users=48) if tiny else BEAUTY_SIZE
    return synthetic_like(**size), "synthetic (amazon-beauty's size)"


def hash_text_index(dataset, cache_dir):
    from recdemo.retrieval.text_index import TextIndex, hashed_trigrams
    return TextIndex.for_dataset(dataset, None, cache_dir=cache_dir, encoder=hashed_trigrams, encoder_name="hash")


class PopularityCandidates:
    """SASRec stand-in when no checkpoint is on this machine: the 50 most popular unseen items."""

    def __init__(self, dataset):
        from recdemo.retrieval.baselines import Popularity
        self.pop = Popularity.for_dataset(dataset)

    def top_k(self, history, k=50):
        s = self.pop.score_all(history)
        s[list(history)] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        return [(int(i), float(s[i])) for i in top]

    def score_all(self, history):
        return self.pop.score_all(history)


def candidate_source(dataset, cfg):
    from recdemo.llm.stack import Stack
    try:
        stack = Stack(cfg, dataset=dataset, train_retriever=False, retriever_text_fallback=False)
        retriever = stack.optional_retriever()
    except Exception:  # noqa: BLE001 - candidates only need to be plausible for timing
        retriever = None
    return (retriever, "sasrec") if retriever is not None else (PopularityCandidates(dataset), "popularity")


def matmul_rate(dev: Dev, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """Best-of FLOP/s of an n x n x n matmul (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=dev.device, dtype=dtype)
    b = torch.randn(n, n, device=dev.device, dtype=dtype)
    _, _ = dev.timed(lambda: a @ b)
    best = min(dev.timed(lambda: a @ b)[1] for _ in range(reps))
    return 2 * n**3 / best


def copy_bandwidth(dev: Dev, n_bytes: int, reps: int = 10) -> float:
    """Best-of bytes/s of a device-to-device copy (each byte read once and written once)."""
    x = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=dev.device).fill_(1.0)
    y = torch.empty_like(x)
    dev.timed(lambda: y.copy_(x))
    best = min(dev.timed(lambda: y.copy_(x))[1] for _ in range(reps))
    return 2 * n_bytes / best


class Cost:
    """Arithmetic of one LLaMA model. N_dec: decoder-stack parameters (every layer + final norm; the
    embedding is a lookup, no FLOPs); N_head: the output projection."""

    def __init__(self, model, dtype: torch.dtype):
        c = model.config
        self.layers, self.d = c.num_hidden_layers, c.hidden_size
        self.n_total = sum(p.numel() for p in model.parameters())
        self.n_embed = model.get_input_embeddings().weight.numel()
        self.n_head = model.get_output_embeddings().weight.numel()
        self.n_dec = self.n_total - self.n_embed - self.n_head
        self.bytes_per_param = torch.finfo(dtype).bits // 8

    def forward_flops(self, rows: int, new: int, past: int) -> float:
        """2 N_dec per token for the matmuls, plus attention: QK^T and AV = 4 L d per (query, key)
        pair, each new token attending to ``past`` + on average (new + 1) / 2 keys."""
        return rows * new * (2 * self.n_dec + 4 * self.layers * self.d * (past + (new + 1) / 2))

    def train_flops(self, rows: int, seq: int, head_rows: int) -> float:
        """One LoRA training step: forward 2 N_dec + backward 2 N_dec per token (activation gradients
        through the frozen weights; LoRA's own weight gradients are negligible), attention forward
        2 L d (S + 1) per token (causal) and backward twice that, and 4 N_head per position whose
        logits are computed (the project's loss keeps only the answer's: token_loss.answer_token_loss)."""
        return rows * seq * (4 * self.n_dec + 6 * self.layers * self.d * (seq + 1)) + 4 * self.n_head * head_rows

    def describe(self) -> dict:
        return {"params": self.n_total, "decoder_params": self.n_dec, "head_params": self.n_head,
                "embedding_params": self.n_embed, "bytes_per_param": self.bytes_per_param}


class CallLog:
    """Counts the model calls of a measurement (decoder-stack calls: rows, new tokens, cached tokens;
    output-projection calls: positions) to price them with ``Cost``."""

    def __init__(self, model):
        from recdemo.llm.rankers.decoding import model_parts
        decoder, head = model_parts(model)
        self.calls: list[tuple[int, int, int]] = []
        self.head_calls, self.head_rows = 0, 0
        self.handles = [decoder.register_forward_pre_hook(self._decoder, with_kwargs=True),
                        head.register_forward_hook(self._head)]

    def _decoder(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]
        cache = kwargs.get("past_key_values")
        self.calls.append((int(shape[0]), int(shape[1]), int(cache.get_seq_length()) if cache is not None else 0))

    def _head(self, module, args, out):
        self.head_calls += 1
        self.head_rows += args[0].numel() // args[0].shape[-1]

    def reset(self) -> None:
        self.calls, self.head_calls, self.head_rows = [], 0, 0

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def flops(self, cost: Cost) -> float:
        return sum(cost.forward_flops(*c) for c in self.calls) + 2 * cost.n_head * self.head_rows

    def weight_bytes(self, cost: Cost) -> float:
        """Every call reads the decoder weights once (and the head when it runs)."""
        return (len(self.calls) * cost.n_dec + self.head_calls * cost.n_head) * cost.bytes_per_param
