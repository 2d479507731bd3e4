"""LoRA fine-tuning on a tiny random Llama: learning, resume, atomic save, cancel, the shared service."""
from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import real_data_root

from recdemo.config import LLMConfig
from recdemo.finetune import checkpoint as ckpt
from recdemo.finetune.loop import FineTuneSpec, lr_at, run_finetune
from recdemo.llm.service import LLMService


def spec_for(out, **kw) -> FineTuneSpec:
    base = dict(tasks=["recommend", "recommend_retrieval", "tallrec", "genrec"], steps=4, batch_size=2,
                lr=5e-3, eval_every=2, eval_users=3, eval_candidates=6, n_candidates=6, lora_dropout=0.1,
                out=str(out))
    base.update(kw)
    return FineTuneSpec(**base)


@pytest.fixture
def service(tiny_llm, tmp_path):
    return LLMService(LLMConfig(adapter_dir=str(tmp_path / "adapters")), llm=tiny_llm)


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def stop_at(step, cancel=None, error=None):
    """A progress callback that cancels (or raises) once training reaches ``step``."""
    def progress(event):
        if event.get("phase") == "training" and event["step"] >= step:
            if error is not None:
                raise error
            cancel.set()
    return progress


def test_a_few_steps_reduce_the_loss_on_a_repeated_example(service, toy_dataset, tmp_path):
    spec = spec_for(tmp_path / "adapters" / "rep", tasks=["genrec"], examples=1, steps=25, batch_size=1,
                    lr=5e-2, lora_dropout=0.0, rank_eval=False, eval_every=0, lora_targets="all-linear")
    losses = []
    result = run_finetune(spec, toy_dataset, service, progress=lambda e: e.get("loss") is not None and
                          losses.append(e["loss"]))
    assert result["status"] == "done" and len(losses) == 25
    assert losses[-1] < 0.5 * losses[0]


def test_run_writes_the_adapter_folder_and_registers_it(service, toy_dataset, tmp_path):
    out = tmp_path / "adapters" / "toy"
    base_before = {k: v.clone() for k, v in service.llm.model.state_dict().items()}
    events = []
    result = run_finetune(spec_for(out), toy_dataset, service, progress=events.append)
    assert result["status"] == "done" and result["adapter"] == "toy" and result["path"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "meta.json"]
    meta = json.loads((out / "meta.json").read_text())
    for key in ("base_model", "tasks", "dataset", "dataset_hash", "steps", "metrics", "seconds", "created", "lora"):
        assert key in meta
    assert meta["dataset_hash"] == toy_dataset.content_hash and meta["steps"] == 4
    assert meta["base_model"] == "tiny-llama" and meta["lora"]["r"] == 8
    assert "val_loss" in result["metrics_before"] and "hr@10" in result["metrics_after"]
    assert {"step", "total", "loss", "eta_s", "phase", "metrics"} <= set(events[-1])
    assert [e["step"] for e in events if e["phase"] == "training"] == [1, 2, 3, 4]
    assert not ckpt.partial_dir(out).exists()  # cleaned up after success
    # the service can serve it, and its base model was never touched (we trained a copy)
    assert "toy" in service.available_adapters() and "toy" in service.adapters.loaded
    with service.use_adapter(None):
        for k, v in service.llm.model.state_dict().items():
            if k in base_before:
                assert torch.equal(v, base_before[k]), k


def test_init_adapter_continues_from_its_weights_and_refuses_another_layout(service, toy_dataset, tmp_path):
    first = tmp_path / "adapters" / "first"
    run_finetune(spec_for(first, rank_eval=False), toy_dataset, service)
    start = load_file(str(first / "adapter_model.safetensors"))
    # lr ~ 0: the continued run keeps the first run's factors, where a fresh LoRA would start with B = 0
    again = tmp_path / "adapters" / "again"
    result = run_finetune(spec_for(again, steps=1, lr=1e-12, rank_eval=False, init_adapter=str(first)),
                          toy_dataset, service)
    assert result["status"] == "done"
    assert json.loads((again / "meta.json").read_text())["init_adapter"] == str(first)
    after = load_file(str(again / "adapter_model.safetensors"))
    assert after.keys() == start.keys()
    assert any("lora_B" in k and start[k].abs().sum() > 0 for k in start)
    assert all(torch.allclose(after[k].float(), start[k].float(), atol=1e-3) for k in start)
    with pytest.raises(ValueError, match="r=8"):
        run_finetune(spec_for(tmp_path / "adapters" / "wide", lora_r=4, init_adapter=str(first)), toy_dataset,
                     service)
    with pytest.raises(ValueError, match="lora-targets"):
        run_finetune(spec_for(tmp_path / "adapters" / "all", lora_targets="all-linear", init_adapter=str(first)),
                     toy_dataset, service)
    with pytest.raises(ValueError, match="not an adapter folder"):
        run_finetune(spec_for(tmp_path / "adapters" / "x", init_adapter=str(tmp_path)), toy_dataset, service)


def test_second_run_trains_beside_a_serving_adapter(service, toy_dataset, tmp_path):
    first = run_finetune(spec_for(tmp_path / "adapters" / "one", steps=2, rank_eval=False), toy_dataset, service)
    with service.use_adapter("one") as llm:
        ids = torch.tensor([[1, 5, 9, 12]])
        before = llm.model(input_ids=ids).logits
    service.adapters.activate("one")
    second = run_finetune(spec_for(tmp_path / "adapters" / "two", steps=2, rank_eval=False, seed=1),
                          toy_dataset, service)
    assert first["status"] == second["status"] == "done"
    assert service.adapters.active == "one"  # training did not switch what the app serves
    with service.use_adapter("one") as llm:
        assert torch.allclose(llm.model(input_ids=ids).logits, before)
    a = load_file(str(tmp_path / "adapters" / "one" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "adapters" / "two" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(service, toy_dataset, tmp_path):
    straight = tmp_path / "adapters" / "straight"
    run_finetune(spec_for(straight, eval_every=0, rank_eval=False), toy_dataset, service)

    out = tmp_path / "adapters" / "resumed"
    cancel = threading.Event()
    r1 = run_finetune(spec_for(out, eval_every=0, rank_eval=False), toy_dataset, service,
                      progress=stop_at(2, cancel), cancel=cancel)
    assert r1["status"] == "cancelled" and r1["step"] == 2 and not out.exists()
    state = json.loads((ckpt.partial_dir(out) / ckpt.STATE_FILE).read_text())
    assert state["step"] == 2 and state["optimizer"]["param_groups"]
    moments = load_file(str(ckpt.partial_dir(out) / ckpt.OPTIM_FILE))
    assert any(k.endswith(".exp_avg_sq") for k in moments) and "rng.torch" in moments

    steps = []
    r2 = run_finetune(spec_for(out, eval_every=0, rank_eval=False), toy_dataset, service,
                      progress=lambda e: e["phase"] == "training" and steps.append(e["step"]))
    assert r2["status"] == "done" and steps == [3, 4]
    a = load_file(str(straight / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter_model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


@pytest.mark.parametrize("micro", [1, 2])  # 2: length-bucketed padded micro-batches
def test_gradient_checkpointing_trains_the_same_weights(service, toy_dataset, tmp_path, micro):
    losses = {}
    for name, gc in (("plain", False), ("gc", True)):
        losses[name] = []
        run_finetune(spec_for(tmp_path / "adapters" / name, steps=2, eval_every=0, rank_eval=False,
                              gradient_checkpointing=gc, micro_batch_size=micro), toy_dataset, service,
                     progress=lambda e: e["phase"] == "training" and losses[name].append(e["loss"]))
    assert losses["gc"] == pytest.approx(losses["plain"], rel=1e-5) and len(losses["gc"]) == 2
    a = load_file(str(tmp_path / "adapters" / "plain" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "adapters" / "gc" / "adapter_model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert not service.llm.model.is_gradient_checkpointing  # the served model was never switched


def test_length_buckets_cut_padding_and_train_the_same_weights(service, toy_dataset, tmp_path):
    runs = {}
    for buckets in (False, True):
        out = tmp_path / "adapters" / f"b{buckets}"
        spec = spec_for(out, tasks=["recommend", "genrec", "tallrec"], steps=3, batch_size=4, micro_batch_size=2,
                        lora_dropout=0.0, eval_every=0, rank_eval=False, length_buckets=buckets)
        runs[buckets] = run_finetune(spec, toy_dataset, service), load_file(str(out / "adapter_model.safetensors"))
    (plain, a), (bucketed, b) = runs[False], runs[True]
    assert plain["padded_positions"] > bucketed["padded_positions"] >= 0
    assert plain["positions"] - plain["padded_positions"] == bucketed["positions"] - bucketed["padded_positions"]
    assert 0 <= bucketed["padding_share"] < plain["padding_share"] < 1
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-3), k


def test_padded_positions_count_what_the_forwards_pad():
    from recdemo.finetune.loop import padded_positions
    part = [{"task": "genrec", "input_ids": [0] * 10}, {"task": "recommend", "input_ids": [0] * 4},
            {"task": "rank", "input_ids": [0] * 7}, {"task": "rank", "input_ids": [0] * 3}]
    assert padded_positions(part) == (2 * 10 + 7 + 3, 6)  # rank examples run one at a time, unpadded
    assert padded_positions(part[:1]) == (10, 0)


def test_length_bucketed_micro_batches_train_what_one_example_at_a_time_does(service, toy_dataset, tmp_path):
    runs = {}
    for micro in (1, 2, 3):  # 3 = the whole step in one padded batch; 2 = a full part and a single
        losses = []
        spec = spec_for(tmp_path / "adapters" / f"m{micro}", tasks=["recommend", "genrec", "tallrec", "sequence"],
                        steps=3, batch_size=3, micro_batch_size=micro, lora_dropout=0.0, eval_every=0,
                        rank_eval=False, lr=2e-2)
        run_finetune(spec, toy_dataset, service, progress=lambda e: e["phase"] == "training" and losses.append(e["loss"]))
        runs[micro] = losses, load_file(str(tmp_path / "adapters" / f"m{micro}" / "adapter_model.safetensors"))
    for micro in (2, 3):
        assert runs[micro][0] == pytest.approx(runs[1][0], rel=1e-5)
        for k, v in runs[1][1].items():  # stored in float16
            assert torch.allclose(runs[micro][1][k].float(), v.float(), atol=1e-3), k


def test_micro_batches_group_similar_lengths():
    from recdemo.finetune.loop import micro_batches
    examples = [{"input_ids": [0] * n, "n": n} for n in (50, 7, 30, 9, 31, 8)]
    assert [[e["n"] for e in part] for part in micro_batches(examples, 2)] == [[7, 8], [9, 30], [31, 50]]
    assert micro_batches(examples, 1) == [[e] for e in examples]  # one at a time: no padding, order kept
    assert [[e["n"] for e in part] for part in micro_batches(examples, 2, buckets=False)] == [[50, 7], [30, 9], [31, 8]]


def test_resume_ignores_state_from_a_different_run(service, toy_dataset, tmp_path):
    out = tmp_path / "adapters" / "x"
    cancel = threading.Event()
    run_finetune(spec_for(out, steps=2, eval_every=0, rank_eval=False), toy_dataset, service,
                 progress=stop_at(1, cancel), cancel=cancel)
    assert json.loads((ckpt.partial_dir(out) / ckpt.STATE_FILE).read_text())["step"] == 1
    steps = []
    run_finetune(spec_for(out, steps=2, eval_every=0, rank_eval=False, lr=1e-3), toy_dataset, service,
                 progress=lambda e: e["phase"] == "training" and steps.append(e["step"]))
    assert steps == [1, 2]


@pytest.mark.parametrize("how", ["cancel", "crash"])
def test_interrupted_run_leaves_the_previous_adapter_byte_identical(service, toy_dataset, tmp_path, how):
    out = tmp_path / "adapters" / "keep"
    run_finetune(spec_for(out, steps=2, rank_eval=False), toy_dataset, service)
    digest = folder_digest(out)
    cancel = threading.Event()
    spec = spec_for(out, steps=6, seed=3, rank_eval=False)
    if how == "cancel":
        result = run_finetune(spec, toy_dataset, service, progress=stop_at(3, cancel), cancel=cancel)
        assert result == {"status": "cancelled", "step": 3, "reason": result["reason"]}
        assert "unchanged" in result["reason"]
    else:
        with pytest.raises(RuntimeError, match="boom"):
            run_finetune(spec, toy_dataset, service, progress=stop_at(3, error=RuntimeError("boom")))
    assert folder_digest(out) == digest
    assert not list(out.parent.glob(".keep.tmp-*")) and not list(out.parent.glob(".keep.old-*"))


def test_cancel_before_training_returns_quickly(service, toy_dataset, tmp_path):
    cancel = threading.Event()
    cancel.set()
    result = run_finetune(spec_for(tmp_path / "adapters" / "c"), toy_dataset, service, cancel=cancel)
    assert result["status"] == "cancelled" and result["step"] == 0
    assert not (tmp_path / "adapters" / "c").exists() and not ckpt.partial_dir(tmp_path / "adapters" / "c").exists()


def test_learning_rate_warms_up_then_decays():
    spec = FineTuneSpec(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, out="x")
    lrs = [lr_at(s, spec) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4)


def test_bad_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown fine-tuning task"):
        FineTuneSpec(tasks=["summarize"], out="x")
    with pytest.raises(ValueError, match="where to write"):
        FineTuneSpec()


@pytest.mark.parametrize("field, value, words", [
    ("steps", 0, "steps"), ("steps", 2.5, "steps"), ("examples", 0, "examples"), ("batch_size", 0, "batch size"),
    ("micro_batch_size", -1, "micro batch"), ("lora_r", 0, "LoRA r"), ("lora_alpha", 0, "LoRA alpha"),
    ("lora_dropout", 1.0, "dropout"), ("lora_targets", " , ", "LoRA targets"), ("lr", 0.0, "learning rate"),
    ("lr", 1.0, "learning rate"), ("lr", float("nan"), "learning rate"), ("lr", "fast", "learning rate"),
    ("warmup_steps", -1, "warmup"), ("min_lr_ratio", 1.5, "ratio"), ("weight_decay", -0.1, "weight decay"),
    ("grad_clip", -1.0, "clipping"), ("max_length", 0, "max length"), ("max_history", 0, "max history"),
    ("n_candidates", 0, "training candidates"), ("eval_every", -1, "eval every"), ("eval_users", -1, "eval users"),
    ("eval_candidates", 0, "eval candidates"), ("seed", -1, "seed"), ("rank_sasrec_weight", -1.0, "SASRec weight"),
    ("rank_eval", "yes", "true or false"), ("out", "", "where to write"),
])
def test_every_settable_field_is_checked_with_one_sentence(field, value, words):
    with pytest.raises(ValueError, match=words) as err:
        FineTuneSpec(**{"out": "x", field: value})
    assert "\n" not in str(err.value) and not re.search(r"\.\s+[A-Z]", str(err.value))  # one sentence


def test_spec_within_limits():
    from recdemo.config import LimitsConfig
    limits = LimitsConfig(max_finetune_steps=100, max_candidates=50, max_history=30)
    spec = FineTuneSpec(steps=100, out="x", eval_users=0, warmup_steps=0, grad_clip=0.0)
    assert spec.validate(limits) is spec
    for kw, words in (({"steps": 101}, "at most 100"), ({"eval_candidates": 60}, "at most 50"),
                      ({"max_history": 31}, "at most 30")):
        with pytest.raises(ValueError, match=words):
            FineTuneSpec(**{"out": "x", "steps": 10, **kw}).validate(limits)


@pytest.mark.integration
def test_real_examples_come_from_training_sequences_only(tiny_tokenizer):
    from recdemo.data import load_dataset
    from recdemo.finetune.examples import ExampleBuilder
    from recdemo.finetune.tasks import TASKS

    ds = load_dataset("movielens-small", root=real_data_root())
    train = ds.train_sequences()
    builder = ExampleBuilder(ds, tiny_tokenizer)
    for ex in builder.training_examples([t for t in TASKS if t != "rank"], 400, seed=0):  # rank: test_ft_rank
        seq = [int(x) for x in train[ex.user]]
        n = len(ex.history)
        assert seq[:n] == ex.history
        if ex.task != "tallrec" or ds.ratings is not None:  # movielens has ratings: no sampled item
            assert seq[n:n + len(ex.items)] == ex.items  # within train: never the validation/test item
        # negatives: items seen in training, never the user's own training items (like SASRec's
        # sampler, only training data decides; a held-out item may appear as a negative by chance)
        negatives = set(ex.candidates) - set(ex.items)
        assert not negatives & set(seq) and all(builder.in_pool[i] for i in negatives)


@pytest.mark.integration
def test_real_model_finetunes_and_serves_the_new_adapter(tmp_path):
    from dataclasses import replace

    from recdemo.config import Config
    from recdemo.data import load_dataset
    from recdemo.finetune.examples import make_profile
    from recdemo.llm.rankers import get_ranker
    from recdemo.records import Candidate, RerankRequest

    cfg = Config.from_env()
    ds = load_dataset("movielens-small", root=real_data_root())
    service = LLMService(replace(cfg.llm, adapter_dir=str(tmp_path / "adapters")))
    q_before = service.llm.model.model.layers[0].self_attn.q_proj.weight.clone()
    spec = FineTuneSpec(tasks=["recommend"], steps=1, batch_size=1, examples=1, eval_users=2, rank_eval=False,
                        max_length=512, out=str(tmp_path / "adapters" / "movielens-small"))
    result = run_finetune(spec, ds, service)
    assert result["status"] == "done" and result["metrics_after"]["val_loss"] > 0
    assert service.available_adapters() == ["movielens-small"]
    history = [int(x) for x in ds.train_sequences()[0][-5:]]
    cands = [i for i in range(200) if i not in history][:8]
    req = RerankRequest(history=history, candidates=[Candidate(i, 1.0 - r / 10, r + 1) for r, i in enumerate(cands)],
                        profile=make_profile(ds.catalog, history), k=3)
    ranked = get_ranker("score", service, ds, None, adapter="movielens-small", fuse=False).rank(req)
    assert len(ranked) == 3 and {r.index for r in ranked} <= set(cands)
    with service.base_model() as llm:  # the served base weights were never trained (a copy was)
        layer = llm.model.model.layers[0].self_attn.q_proj
        weight = layer.base_layer.weight if hasattr(layer, "base_layer") else layer.weight
        assert torch.equal(weight, q_before)
