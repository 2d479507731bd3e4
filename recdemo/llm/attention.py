"""The attention the served model runs on a CPU: transformers' SDPA, except for a masked forward of
several tokens (a prefill, the rankers' candidate trees) in a model with grouped KV heads.

There transformers copies every KV head once per query head that reads it (``repeat_kv``: for
SmolLM2 three copies of each layer's keys and values, ~12 MB a layer for a four-user prefill, in
fresh memory that faults page by page on this VM), then runs SDPA on the copies. Here the query
heads that share a KV head are laid side by side along the sequence instead ([batch, KV heads,
group x tokens, dim]), with the mask repeated to match, so SDPA reads the KV heads as they are: the
same kernel and the same sums, no copy (in bfloat16 the kernel's blocks over the longer query may
round differently: 5 of 192 replayed explanation rows changed a token; in float32 the tests find the
same logits). One decode token (transformers packs those itself), an unmasked call, or a mask with
its own per-head rows go to transformers' function as before.
"""
from __future__ import annotations

import functools

import torch

NAME = "recdemo_grouped_sdpa"


def grouped_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                 is_causal=None, **kwargs):
    """A transformers attention function (``AttentionInterface``): query [batch, heads, tokens, dim],
    key/value [batch, KV heads, positions, dim], mask [batch or 1, 1, tokens, positions] -> the output
    [batch, tokens, heads, dim] and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, tokens, dim = query.shape
    if (groups == 1 or tokens == 1 or attention_mask is None or attention_mask.dim() != 4
            or attention_mask.shape[1] != 1 or dropout or query.device.type != "cpu"
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    # query head h reads KV head h // groups: its rows go to block (h % groups) of that KV head
    packed = query.reshape(batch, heads // groups, groups * tokens, dim)
    mask = attention_mask.repeat(1, 1, groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, tokens, dim).transpose(1, 2).contiguous(), None


@functools.cache
def _registered() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as SDPA's
    return NAME


def use_grouped_attention(model) -> bool:
    """Switch a model that runs SDPA to ``grouped_sdpa`` (also through a peft wrapper); returns whether
    it did (a model on another attention implementation is left as it is)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    base.set_attn_implementation(_registered())
    return True
