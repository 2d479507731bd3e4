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

    corpus = list(P.TEMPLATES.values()) + [P.SYSTEM] + toy_titles(60) + TOY_GENRES * 3 + [
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
    """A random 2-layer LlamaForCausalLM (hidden 32; init std 0.2 so its logits can peak) in recdemo's LLM record."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from recdemo.llm.models import LLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = LlamaForCausalLM(config).eval()
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
