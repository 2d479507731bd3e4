"""Shared pytest fixtures: tiny models and toy data built in-process (no downloads, no real data).

Fixtures here are shared by several test files; add new ones below, do not change existing ones.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

TOY_GENRES = ["Comedy", "Drama", "Action", "Animation", "Horror", "Romance"]
TOY_WORDS = ["Alpha", "Bravo", "Castle", "Delta", "Echo", "Forest", "Ghost", "Harbor", "Island", "Jungle"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def toy_titles(n: int = 40) -> list[str]:
    return [f"{TOY_WORDS[i % 10]} {TOY_WORDS[(i // 10) % 10]} Story ({1980 + i})" for i in range(n)]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


def make_tiny_tokenizer():
    """A byte-level BPE (~600 tokens) trained on the prompt templates and toy titles, with a
    SmolLM2-style chat template (<|im_start|>/<|im_end|>), so prompts.render() takes the chat path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from recdemo.llm import prompts as P

    corpus = list(P.TEMPLATES.values()) + [P.SYSTEM, P.EXPLAIN_SYSTEM] + \
        [text for pair in P.EXPLAIN_EXAMPLES.values() for text in pair] + toy_titles(60) + TOY_GENRES * 3 + [
        "Keywords: Summary: Yes No movies products watched bought (no profile) (none)"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_llm(tokenizer, seed: int = 0):
    """A random 2-layer LlamaForCausalLM (hidden 32, 2 KV heads for 4 query heads; init std 0.2 so its
    logits can peak) in recdemo's LLM record, on the attention ``load_llm`` serves on a CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from recdemo.llm.attention import use_grouped_attention
    from recdemo.llm.models import LLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = LlamaForCausalLM(config).eval()
    use_grouped_attention(model)  # as load_llm serves a model on a CPU
    return LLM(model=model, tokenizer=tokenizer, name="tiny-llama", device=torch.device("cpu"),
               dtype=torch.float32)


@pytest.fixture
def tiny_llm(tiny_tokenizer):
    return make_tiny_llm(tiny_tokenizer)


def make_toy_dataset(n_items: int = 40, n_users: int = 12, seed: int = 0, ratings: bool = True):
    """Movies with genres; each user mostly follows one genre; lengths 6-14; ratings 1-5."""
    from recdemo.data import Catalog, Dataset

    rng = np.random.default_rng(seed)
    titles = toy_titles(n_items)
    attrs = [(TOY_GENRES[i % 6], TOY_GENRES[(i // 6) % 6]) for i in range(n_items)]
    catalog = Catalog(ids=[str(i + 1) for i in range(n_items)], titles=titles, attributes=attrs,
                      attribute_name="genres")
    seqs, rates = [], []
    for u in range(n_users):
        liked = [i for i in range(n_items) if i % 6 == u % 6]
        length = int(rng.integers(6, 15))
        pool = liked + list(rng.choice(n_items, size=n_items // 3, replace=False))
        seqs.append(np.array(rng.choice(sorted(set(pool)), size=min(length, len(set(pool))), replace=False),
                             dtype=np.int64))
        rates.append(rng.integers(1, 6, size=len(seqs[-1])).astype(np.float32))
    return Dataset(name="toy", catalog=catalog, users=[f"u{u}" for u in range(n_users)], sequences=seqs,
                   ratings=rates if ratings else None)


@pytest.fixture
def toy_dataset():
    return make_toy_dataset()


def make_cycle_dataset(n_cycles: int = 3, cycle_len: int = 12, n_users: int = 60, seed: int = 0):
    """Users who walk a fixed item cycle (item c*L + j is always followed by c*L + (j+1) % L), from a
    random start, 6 to L steps (no repeats): the next item is fully predictable from the last one,
    while every item is about equally popular (so popularity cannot predict it)."""
    from recdemo.data import Catalog, Dataset

    rng = np.random.default_rng(seed)
    n_items = n_cycles * cycle_len
    catalog = Catalog(ids=[f"i{i}" for i in range(n_items)], titles=[f"Item {i}" for i in range(n_items)])
    seqs = []
    for u in range(n_users):
        c, start, length = u % n_cycles, int(rng.integers(cycle_len)), int(rng.integers(6, cycle_len + 1))
        seqs.append(np.array([c * cycle_len + (start + t) % cycle_len for t in range(length)], dtype=np.int64))
    return Dataset(name="cycles", catalog=catalog, users=[f"u{u}" for u in range(n_users)], sequences=seqs)


@pytest.fixture
def cycle_dataset():
    return make_cycle_dataset()


class PopularityRetriever:
    """Stands in for SASRec's ``Retriever`` (top_k / score_all) in ranker tests: training-count
    popularity plus a fixed tiny jitter, so scores are distinct and deterministic."""

    def __init__(self, dataset, seed: int = 0):
        counts = np.bincount(np.concatenate(dataset.train_sequences()), minlength=dataset.n_items)
        self.scores = counts.astype(np.float64) + np.random.default_rng(seed).random(dataset.n_items) * 0.01

    def score_all(self, history):
        return self.scores.copy()

    def top_k(self, history, k=50):
        s = self.score_all(history)
        s[np.asarray(list(history), dtype=np.int64)] = -np.inf
        top = np.argsort(-s, kind="stable")[:k]
        return [(int(i), float(s[i])) for i in top if np.isfinite(s[i])]


@pytest.fixture
def pop_retriever(toy_dataset):
    return PopularityRetriever(toy_dataset)


def make_tiny_adapter(llm, folder, seed: int = 1, base_model: str | None = None, r: int = 4,
                      targets=("q_proj", "v_proj"), meta: dict | None = None):
    """Save a random (non-zero) LoRA for ``llm`` to ``folder`` in the shipped layout:
    adapter_config.json + adapter_model.safetensors (peft) + meta.json. The base model is untouched
    (the LoRA is built on a deep copy)."""
    import copy
    import json
    from pathlib import Path

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(copy.deepcopy(llm.model), config)
    folder = Path(folder)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    info = {"base_model": base_model or llm.name, "tasks": ["recommend"], "dataset": "toy", "steps": 0,
            "metrics": {}, "seconds": 0.0, "created": "test", "lora": {"r": r, "targets": list(targets)}}
    (folder / "meta.json").write_text(json.dumps({**info, **(meta or {})}))
    return folder


@pytest.fixture
def tiny_service(tiny_llm, tmp_path):
    """An LLMService around the tiny random model, adapters under tmp_path/adapters."""
    from recdemo.config import LLMConfig
    from recdemo.llm.service import LLMService

    cfg = LLMConfig(model="tiny-llama", device="cpu", adapter_dir=str(tmp_path / "adapters"),
                    fusion_dir=str(tmp_path / "fusion"))
    return LLMService(cfg, llm=tiny_llm)


def queue_while_busy(lock, queue, targets) -> None:
    """Run each of ``targets`` in its own thread, started while ``lock`` (the model) is held and each
    after the previous one waits in ``queue`` (a Coalescer), so all of them queue for one batch; then
    release the lock and wait for them all."""
    import threading

    threads = [threading.Thread(target=t) for t in targets]
    with lock:
        for n, t in enumerate(threads, 1):
            t.start()
            while queue.waiting < n:
                threading.Event().wait(0.001)
    for t in threads:
        t.join(60)
        assert not t.is_alive()


def hash_encoder(texts, dim: int = 64):
    """The model-free encoder (``text_index.hashed_trigrams``) at a size for toy catalogs."""
    from recdemo.retrieval.text_index import hashed_trigrams

    return hashed_trigrams(texts, dim)


@pytest.fixture
def toy_text_index(toy_dataset, tmp_path):
    """A TextIndex over ``toy_dataset`` with ``hash_encoder`` (embeddings cached under tmp_path)."""
    from recdemo.retrieval.text_index import TextIndex

    return TextIndex.for_dataset(toy_dataset, None, cache_dir=tmp_path / "text_index",
                                 encoder=hash_encoder, encoder_name="hash")


# -- the real datasets, for the integration tests --
def real_data_root(*datasets: str) -> str:
    """The data root the integration tests read (RECDEMO_DATA_DIR through Config.from_env, else
    ./data), checked to hold ``datasets`` (default movielens-small). A missing one fails the test,
    saying how to get it: never a skip, which would read as a pass."""
    from pathlib import Path

    from recdemo.config import Config
    from recdemo.data.dataset import BUILTIN_FOLDERS

    root = Path(Config.from_env().data.root)
    missing = [d for d in datasets or ("movielens-small",) if not (root / BUILTIN_FOLDERS[d]).is_dir()]
    if missing:
        pytest.fail(f"this integration test needs {' and '.join(missing)} under {root} (RECDEMO_DATA_DIR): "
                    + "; ".join(f"`python -m recdemo data download {d}`" for d in missing)
                    + ", or set RECDEMO_DATA_DIR to a folder that holds them (e.g. ../shared/data)")
    return str(root)


def fake_cli_stack(monkeypatch, tmp_path, dataset, retriever, llm):
    """A Config whose CLI commands build their stack (llm/stack.py) on ``dataset``, ``retriever`` and the
    tiny ``llm`` instead of loading real data and SmolLM2; caches and adapters go to ``tmp_path``."""
    from dataclasses import replace

    import recdemo.llm.service as service_mod
    import recdemo.llm.stack as stack_mod
    import recdemo.retrieval.retriever as retriever_mod
    from recdemo.config import Config

    real_service = service_mod.LLMService
    monkeypatch.setattr(stack_mod, "load_from_config", lambda cfg: dataset)
    monkeypatch.setattr(stack_mod, "LLMService", lambda cfg: real_service(cfg, llm=llm))
    monkeypatch.setattr(retriever_mod.Retriever, "for_dataset", classmethod(lambda cls, *a, **k: retriever))
    cfg = Config()
    return replace(cfg, llm=replace(cfg.llm, fusion_dir=str(tmp_path / "fusion"), adapter_dir=str(tmp_path / "ad"),
                                    fusion_cache_dir=str(tmp_path / "fusion-cache")))


@pytest.fixture
def toy_eval_data():
    """(toy dataset of 30 users, a popularity retriever): what the evaluation tests rank."""
    ds = make_toy_dataset(n_items=40, n_users=30, seed=3)
    return ds, PopularityRetriever(ds)


def without_latency(metrics: dict) -> dict:
    """Metrics minus the timings (which differ run to run)."""
    return {k: v for k, v in metrics.items() if not k.startswith("latency")}


def load_bench(name: str, on_path: bool = False):
    """The bench script ``bench/<name>.py`` as a module (``bench_<name>``, registered in sys.modules: its
    dataclasses look their module up while it runs); ``on_path`` also puts bench/ on sys.path first, for
    a test that imports the script's sibling modules."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "bench"
    if on_path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
