import pytest
import torch

from recdemo.retrieval.sasrec import SASRec, SASRecConfig


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_items=30, maxlen=8, hidden=16, layers=2, heads=2, dropout=0.0)
    cfg.update(kw)
    return SASRec(SASRecConfig(**cfg)).eval()


def test_shapes_and_shared_embeddings():
    model = tiny_model()
    hidden = model(model.pad_histories([[1, 2, 3], [4]]))
    assert hidden.shape == (2, 3, 16)  # as wide as the longest history
    assert model.score([[1, 2, 3]]).shape == (1, 30)
    # the output table is the input table minus the padding row
    assert torch.equal(model.output_embeddings, model.item_emb.weight[1:])
    q = model.encode([[1, 2, 3]])
    assert torch.allclose(model.score([[1, 2, 3]]), q @ model.item_emb.weight[1:].T)


def test_attention_is_causal():
    model = tiny_model()
    a = model(model.pad_histories([[1, 2, 3, 4, 5]]))
    b = model(model.pad_histories([[1, 2, 3, 4, 9]]))
    assert torch.allclose(a[0, :-1], b[0, :-1], atol=1e-6)  # earlier positions never see the last item
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_padding_does_not_change_the_query():
    model = tiny_model()
    alone = model.encode([[5, 6, 7]])
    batched = model.encode([[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_leading_padding_columns_change_nothing():
    model = tiny_model()
    short = model.pad_histories([[5, 6, 7], [8]])
    full = torch.zeros(2, 8, dtype=torch.long)
    full[:, -3:] = short
    assert torch.allclose(model(short)[:, -1], model(full)[:, -1], atol=1e-5)
    with pytest.raises(ValueError, match="longer than maxlen"):
        model(torch.ones(1, 9, dtype=torch.long))


def test_histories_are_cut_to_maxlen_and_shifted():
    model = tiny_model()
    padded = model.pad_histories([list(range(12)), [0]])
    assert padded[0].tolist() == [i + 1 for i in range(4, 12)]  # the last 8 items, +1 for padding
    assert padded[1].tolist() == [0] * 7 + [1]


def test_encode_keeps_training_mode():
    model = tiny_model(dropout=0.5).train()
    model.encode([[1, 2]])
    assert model.training


def test_item_features_add_to_the_table_and_fold_into_a_plain_model():
    model = tiny_model()
    plain_table = model.item_emb.weight.detach().clone()
    features = torch.randn(30, 5)
    model.attach_item_features(features)
    table = model.item_table()
    assert torch.equal(table[0], torch.zeros(16))  # padding stays zero
    assert not torch.allclose(table[1:], plain_table[1:])  # every item moved by its own features
    expected = model.score([[1, 2, 3], [7]])
    model.fold_item_features()
    assert model.feature_proj is None and not hasattr(model, "item_features")
    assert torch.allclose(model.score([[1, 2, 3], [7]]), expected, atol=1e-5)
    # the folded model is an ordinary SASRec: its weights load into a fresh one, no extra keys
    fresh = tiny_model(seed=1)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.allclose(fresh.score([[1, 2, 3]]), expected[:1], atol=1e-5)


def test_item_features_must_cover_the_catalog():
    with pytest.raises(ValueError, match="feature rows"):
        tiny_model().attach_item_features(torch.randn(29, 5))
