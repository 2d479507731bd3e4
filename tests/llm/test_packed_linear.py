"""llm/packed_linear.py: small inference forwards through the packed weight give the plain layer's
numbers; big, training and non-float32 forwards take the plain path; LoRA adapters, a weight changed
in place and the memory limit are respected."""
import copy

import pytest
import torch

from recdemo.llm.packed_linear import PackedLinear, pack_linears, packing_available

needs_packing = pytest.mark.skipif(not packing_available(), reason="this torch build cannot pack oneDNN weights")


def count_packed_forwards(monkeypatch) -> list:
    """Record each forward that went through the packed weight."""
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, x, *rest):
            calls.append(tuple(x.shape))
            return real(x, *rest)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    return calls


@needs_packing
def test_a_packed_model_gives_the_plain_logits_and_greedy_tokens(tiny_llm):
    plain = copy.deepcopy(tiny_llm.model)
    packed = tiny_llm.model
    n = pack_linears(packed, max_rows=16, max_mb=64)
    layers = [m for m in packed.modules() if isinstance(m, torch.nn.Linear)]
    assert n == len(layers) and all(type(m) is PackedLinear for m in layers)  # every projection + the head
    ids = torch.randint(3, 100, (2, 5))
    with torch.inference_mode():
        torch.testing.assert_close(packed(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        out = packed.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        again = plain.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out, again)


@needs_packing
def test_small_forwards_use_the_packed_weight_and_big_or_training_ones_the_plain_layer(monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    reference = copy.deepcopy(layer)
    assert pack_linears(torch.nn.Sequential(layer), max_rows=4, max_mb=1) == 1
    calls = count_packed_forwards(monkeypatch)
    small, big = torch.randn(1, 4, 8), torch.randn(2, 3, 8)  # 4 rows; 6 rows
    with torch.no_grad():
        torch.testing.assert_close(layer(small), reference(small), rtol=1e-5, atol=1e-6)
        assert calls == [(1, 4, 8)]
        assert torch.equal(layer(big), reference(big))  # over max_rows: the plain layer, the same sums
        assert len(calls) == 1
    x = torch.randn(2, 8, requires_grad=True)
    layer(x).sum().backward()  # a fine-tune on the served model: gradients through the plain layer
    assert len(calls) == 1 and x.grad is not None and layer.weight.grad is not None


@needs_packing
def test_a_weight_changed_in_place_is_packed_again():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 3, bias=False)
    pack_linears(torch.nn.Sequential(layer), max_rows=8, max_mb=1)
    x = torch.randn(2, 6)
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2)
        torch.testing.assert_close(layer(x), 2 * before)


@needs_packing
def test_a_lora_adapter_on_a_packed_model_adds_its_delta(tiny_llm, tmp_path):
    from conftest import make_tiny_adapter

    from recdemo.llm.adapters import AdapterManager

    make_tiny_adapter(tiny_llm, tmp_path / "a", seed=1)
    plain = copy.deepcopy(tiny_llm)
    pack_linears(tiny_llm.model, max_rows=64, max_mb=64)
    ids = torch.randint(3, 100, (1, 6))
    results = []
    for llm in (tiny_llm, plain):
        manager = AdapterManager(llm, tmp_path)
        with torch.inference_mode():
            manager.activate("a")
            on = manager.peft(input_ids=ids).logits
            manager.activate(None)
            off = manager.peft(input_ids=ids).logits
        results.append((on, off))
    (packed_on, packed_off), (plain_on, plain_off) = results
    assert not torch.allclose(packed_on, packed_off, atol=1e-4)  # the adapter still acts
    torch.testing.assert_close(packed_on, plain_on, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_off, plain_off, rtol=1e-5, atol=1e-5)


def test_nothing_is_packed_over_the_memory_limit_when_off_or_outside_float32():
    big = torch.nn.Sequential(torch.nn.Linear(512, 1024))  # 2 MB of weights
    assert pack_linears(big, max_rows=8, max_mb=1) == 0 and type(big[0]) is torch.nn.Linear
    assert pack_linears(big, max_rows=0, max_mb=64) == 0 and type(big[0]) is torch.nn.Linear
    half = torch.nn.Sequential(torch.nn.Linear(4, 4)).to(torch.bfloat16)
    assert pack_linears(half, max_rows=8, max_mb=64) == 0 and type(half[0]) is torch.nn.Linear


@needs_packing
def test_the_service_packs_the_model_it_loads(monkeypatch, tiny_llm):
    """``LLMService.llm`` packs what ``load_llm`` returns, by the config's two settings."""
    from recdemo.config import LLMConfig
    from recdemo.llm import service as service_module

    monkeypatch.setattr(service_module, "load_llm", lambda cfg: tiny_llm)
    on = service_module.LLMService(LLMConfig(device="cpu")).llm.model
    assert type(on.lm_head) is PackedLinear and on.lm_head.max_rows == LLMConfig().cpu_packed_rows
    copied = copy.deepcopy(tiny_llm)  # what a CPU fine-tune trains on: plain layers, the same numbers
    assert type(copied.model.lm_head) is torch.nn.Linear
    assert copied.model.lm_head.weight is copied.model.get_input_embeddings().weight  # still tied
    ids = torch.randint(3, 100, (1, 5))
    with torch.inference_mode():
        torch.testing.assert_close(copied.model(input_ids=ids).logits, on(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(service_module, "load_llm", lambda cfg: copied)
    off = service_module.LLMService(LLMConfig(device="cpu", cpu_packed_rows=0)).llm.model
    assert type(off.lm_head) is torch.nn.Linear
