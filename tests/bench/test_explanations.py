"""bench/explanations.py's --int8 option: the model it runs is an int8 copy of the served one (packed
linears included), close to it, and the project's decoder generates with it; the served model is untouched."""
import copy

import torch

from conftest import load_bench
from recdemo.llm.decode import Decoder
from recdemo.llm.packed_linear import PackedLinear, pack_linears

explanations = load_bench("explanations")


def test_int8_copy_replaces_every_linear_and_stays_close(tiny_llm):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    packed = pack_linears(tiny_llm.model, max_rows=32, max_mb=64)
    served = tiny_llm.model
    quantized = copy.copy(tiny_llm)
    ids = torch.tensor([[5, 9, 12, 7, 3, 20, 11]])
    with torch.no_grad():
        before = served(input_ids=ids).logits
    for granularity in ("channel", "tensor"):
        explanations.quantize_int8(quantized, granularity)
        layers = [m for m in quantized.model.modules() if isinstance(m, torch.nn.Linear)]
        int8 = [m for m in quantized.model.modules() if isinstance(m, DynamicInt8Linear)]
        assert not layers and len(int8) >= 15  # 2 layers x 7 projections + the output projection
        with torch.no_grad():
            after = quantized.model(input_ids=ids).logits
        cosine = torch.nn.functional.cosine_similarity(before.flatten(), after.flatten(), dim=0)
        assert cosine > 0.98 and not torch.equal(before, after)
        quantized.model = served
    # the served model keeps its float (packed) layers
    assert packed and any(isinstance(m, PackedLinear) for m in served.modules())
    assert not any(isinstance(m, DynamicInt8Linear) for m in served.modules())


def test_the_decoder_generates_with_the_int8_copy(tiny_llm):
    quantized = copy.copy(tiny_llm)
    explanations.quantize_int8(quantized, "channel")
    rows = [[5, 9, 12, 7, 3], [5, 9, 12, 8, 4, 6]]
    out = Decoder("eager", min_prefix_tokens=3).generate(quantized, rows, 6)
    assert [len(o) for o in out] == [6, 6]
    assert all(0 <= t < len(tiny_llm.tokenizer) for o in out for t in o)
