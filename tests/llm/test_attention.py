"""llm/attention.py: the grouped-query SDPA the served model runs on a CPU gives transformers' SDPA
results (prefill with pads, tree masks, one decode token) without copying the KV heads."""
import types

import pytest
import torch

from recdemo.llm.attention import NAME, grouped_sdpa, use_grouped_attention


def sdpa_reference(module, q, k, v, mask):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5)[0]


@pytest.mark.parametrize("tokens", [1, 5])
def test_grouped_attention_equals_sdpa_under_any_mask(tokens):
    """Each query row sees its own random set of positions (a tree of candidate titles, left pads);
    the query heads of one KV head must each read that KV head, with that row's mask."""
    torch.manual_seed(0)
    batch, heads, groups, positions, dim = 3, 6, 3, 9, 8
    module = types.SimpleNamespace(num_key_value_groups=groups, is_causal=True, training=False)
    q = torch.randn(batch, heads, tokens, dim)
    k, v = torch.randn(2, batch, heads // groups, positions, dim)
    mask = torch.rand(batch, 1, tokens, positions) < 0.6
    mask[..., -1] = True  # every row sees at least its own position
    got, weights = grouped_sdpa(module, q, k, v, mask, scaling=dim ** -0.5)
    assert weights is None and got.shape == (batch, tokens, heads, dim)
    torch.testing.assert_close(got, sdpa_reference(module, q, k, v, mask))
    # a head reading another head's KV would differ: the grouping really is head h -> KV head h // groups
    wrong = sdpa_reference(module, q.flip(1), k, v, mask).flip(2)
    assert not torch.allclose(got, wrong)


def test_the_tiny_llama_prefills_and_decodes_as_with_sdpa(tiny_llm):
    """Left-padded rows of a grouped-KV model: the same logits as transformers' SDPA, then the same
    greedy tokens."""
    model = tiny_llm.model
    assert model.config._attn_implementation == NAME  # the fixture runs what load_llm serves on a CPU
    ids = torch.randint(3, 100, (3, 11))
    mask = torch.ones_like(ids)
    mask[0, :4] = mask[1, :1] = 0
    with torch.inference_mode():
        grouped = model(input_ids=ids, attention_mask=mask).logits
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        model.set_attn_implementation("sdpa")
        try:
            plain = model(input_ids=ids, attention_mask=mask).logits
            again = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        finally:
            model.set_attn_implementation(NAME)
    real = mask.bool()
    torch.testing.assert_close(grouped[real], plain[real])
    assert torch.equal(out, again)


def test_only_an_sdpa_model_is_switched(tiny_tokenizer):
    from conftest import make_tiny_llm

    model = make_tiny_llm(tiny_tokenizer).model
    model.set_attn_implementation("eager")
    assert not use_grouped_attention(model) and model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    assert use_grouped_attention(model) and model.config._attn_implementation == NAME
