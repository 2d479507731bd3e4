"""bench/gpu.py end to end in its --tiny CPU mode (reduced repetitions), its arithmetic, and the
speed fix it led to (stop-string criteria built once, recdemo/llm/service.py)."""
import json
import math

import pytest
import torch

from conftest import load_bench, make_tiny_tokenizer, real_data_root


@pytest.fixture(scope="module")
def bench():
    return load_bench("gpu", on_path=True)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The tests' tiny BPE saved as a folder: the bench needs no model cache and no download."""
    folder = tmp_path_factory.mktemp("tokenizer")
    make_tiny_tokenizer().save_pretrained(str(folder))
    return folder


def tiny_args(out, tokenizer_dir, *extra):
    return ["--tiny", "--synthetic", "--out", str(out), "--tokenizer", str(tokenizer_dir), "--users", "2",
            "--batch-sizes", "2", "--seq-lens", "32", "--train-steps", "1", "--finetune-steps", "2",
            "--threads", "1", *extra]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_run_writes_every_figure(bench, tokenizer_dir, tmp_path):
    bench.main(tiny_args(tmp_path, tokenizer_dir, "--lora-targets", "q_proj,v_proj", "all-linear"))
    r = json.loads((tmp_path / "gpu-tiny-cpu.json").read_text())
    assert r["mode"] == "tiny-cpu" and r["gpu_figures"] is False
    assert "errors" not in r
    assert r["model"]["vocab"] == 32000 and r["model"]["attn"] == "sdpa" and r["model"]["dtype"] == "float32"
    assert r["catalog"]["source"] == "synthetic" and r["candidates"] == "popularity"
    assert positive(r["rates"]["matmul_flops"]) and positive(r["rates"]["copy_bytes_per_s"])
    assert set(r["formulas"]) == {"inference_flops", "inference_bytes", "inference_limit", "train_flops"}
    for name in ("score", "palr"):
        x = r[name]
        assert x["n"] == 2 and x["p90_ms"] >= x["p50_ms"] > 0
        assert positive(x["limit_ms"]) and 0 < x["ratio"] < 5
        assert x["prompt_tokens"] > 100 and x["forwards"] >= 1
    assert r["score"]["forwards"] == 2  # the prompt, then every candidate's branching tokens in one call
    assert r["palr"]["forwards"] > 2  # one call per branching step of 10 titles
    (b,) = r["score_batched"]
    assert b["batch"] == 2 and positive(b["per_user_ms"]) and 0 < b["ratio"] < 5
    p = r["profile"]
    assert p["generated_tokens"] >= 2 and positive(p["tokens_per_s"]) and positive(p["limit_tokens_per_s"])
    assert [(x["targets"], x["seq"]) for x in r["lora"]] == [("q_proj,v_proj", 32), ("all-linear", 32)]
    for x in r["lora"]:
        assert positive(x["tokens_per_s"]) and positive(x["limit_tokens_per_s"]) and 0 < x["ratio"] < 5
        assert x["peak_gb"] is None  # CUDA only
    assert r["lora"][1]["trainable_params"] > r["lora"][0]["trainable_params"] > 0
    assert [f["lora_targets"] for f in r["finetune"]] == ["q_proj,v_proj", "all-linear"]
    for f in r["finetune"]:
        assert f["status"] == "done" and f["steps"] == 2 and f["share_base"] == "share" and f["served"] is None
        assert positive(f["tokens_per_s"]) and 0 <= f["padding_share"] < 1 and 0 < f["ratio"] < 5
        assert f["limit_tokens_per_s"] > f["tokens_per_s"]
    t = r["together"]  # the same run while a thread serves score requests from the same model
    assert t["status"] == "done" and t["served"]["requests"] >= 1 and t["served"]["errors"] == 0
    e = r["explain"]
    assert e["explanations"] == 10 and e["n"] == 2 and e["p90_ms"] >= e["p50_ms"] > 0 and positive(e["limit_ms"])
    ev = r["eval"]
    assert (ev["users"], ev["test_users"], ev["batch_size"], ev["measured_all"]) == (8, 48, 4, False)
    assert ev["minutes_all_users"] == pytest.approx(ev["per_user_ms"] * 48 / 6e4) and ev["ndcg@10"] is not None
    c = r["concurrent"]
    assert (c["users"], c["requests"], c["errors"]) == (2, 2, 0) and c["p95_ms"] >= c["p50_ms"] > 0
    assert r["memory"] == {"weights_gb": None, "inference_peak_gb": None, "inference_peak_reserved_gb": None,
                           "together_gb": None}
    assert [t[0] for t in bench.TARGETS] == list(r["targets"])
    assert {t["met"] for t in r["targets"].values()} == {None}  # tiny CPU figures are never judged
    assert r["targets"]["10 explanations for one user p50 (ms)"]["value"] == e["p50_ms"]
    table = (tmp_path / "gpu-tiny-cpu.md").read_text()
    assert table.startswith("### TINY CPU SMOKE RUN (not GPU figures)") and "| score rerank" in table
    for row in ("10 explanations", "run_finetune, shared base", "serving and fine-tuning at once", "evaluate --batch-size",
                "2 concurrent users"):
        assert row in table, row
    assert "<= 300 ms (not judged)" in table


@pytest.mark.parametrize("extra", [[], ["--grad-checkpointing"]])
def test_lora_bench_gives_the_served_model_back_unchanged(bench, tokenizer_dir, tmp_path, extra):
    args = bench.parse_args(tiny_args(tmp_path, tokenizer_dir, *extra))
    ctx, _ = bench.setup(args, str(tmp_path))
    ids = torch.arange(5, 25)[None]
    before = ctx.llm.model(input_ids=ids).logits
    out = bench.bench_lora(ctx, "q_proj,v_proj", 32)
    assert out["steps"] == 1 and positive(out["step_ms"]) and out["grad_checkpointing"] == bool(extra)
    assert not any("lora" in name for name, _ in ctx.llm.model.named_modules())
    assert not ctx.llm.model.training and not ctx.llm.model.is_gradient_checkpointing
    after = ctx.llm.model(input_ids=ids).logits
    assert torch.equal(after, before) and not after.requires_grad  # frozen, no input-grad hook left


def test_training_sequences_have_the_exact_length_and_end_with_the_answer(bench, tokenizer_dir, tmp_path):
    ctx, _ = bench.setup(bench.parse_args(tiny_args(tmp_path, tokenizer_dir)), str(tmp_path))
    seqs = bench.training_sequences(ctx, 48, 5)
    assert [len(s["input_ids"]) for s in seqs] == [48] * 5 == [len(s["labels"]) for s in seqs]
    for s in seqs:  # a prompt (unlabelled), then the whole answer (labelled) up to the end
        labelled = [x != -100 for x in s["labels"]]
        first = labelled.index(True)
        assert first > 0 and all(labelled[first:]) and s["labels"][first:] == s["input_ids"][first:]
    assert len({tuple(s["input_ids"]) for s in seqs}) == 5
    with pytest.raises(ValueError, match="shorter --seq-lens"):
        bench.training_sequences(ctx, 100_000, 1, rounds=2)


def test_no_gpu_and_no_tiny_is_a_clear_message(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--tiny"):
        bench.setup(bench.parse_args(["--out", str(tmp_path)]), str(tmp_path))


def test_llama_7b_shape_has_the_paper_parameter_count(bench):
    import gpu_setup

    class Vocab32k:
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self):
            return 32000

    model = gpu_setup.build_model(gpu_setup.LLAMA_7B, Vocab32k(), torch.device("meta"), torch.bfloat16)
    cost = gpu_setup.Cost(model, torch.bfloat16)
    assert cost.n_total == 6_738_415_616  # LLaMA-7B
    assert next(model.parameters()).dtype == torch.bfloat16 and cost.bytes_per_param == 2
    assert cost.n_head == cost.n_embed == 32000 * 4096
    # a forward of 1 token with no context costs 2 N_dec + attention over itself
    assert cost.forward_flops(1, 1, 0) == 2 * cost.n_dec + 4 * 32 * 4096
    # LoRA step, 512 tokens, logits for 20 answer positions: ~4 N_dec per token + attention + the head
    per_token = cost.train_flops(1, 512, 20) / 512
    assert 4 * cost.n_dec < per_token < 4 * cost.n_dec * 1.1
    assert cost.train_flops(0, 0, 20) == 4 * cost.n_head * 20


def test_call_log_prices_the_calls_a_model_makes(bench, tiny_llm):
    import gpu_setup

    model = tiny_llm.model
    cost = gpu_setup.Cost(model, torch.float32)
    log = gpu_setup.CallLog(model)
    with torch.inference_mode():
        out = model.model(input_ids=torch.arange(3, 13)[None], use_cache=True)
        model.model(input_ids=torch.tensor([[5, 6, 7]]), past_key_values=out.past_key_values, use_cache=True)
        model(input_ids=torch.arange(3, 7)[None, :].repeat(2, 1), logits_to_keep=1)
    log.close()
    assert log.calls == [(1, 10, 0), (1, 3, 10), (2, 4, 0)]
    assert log.head_calls == 1 and log.head_rows == 2
    expected = cost.forward_flops(1, 10, 0) + cost.forward_flops(1, 3, 10) + cost.forward_flops(2, 4, 0)
    assert log.flops(cost) == pytest.approx(expected + 2 * cost.n_head * 2)
    assert log.weight_bytes(cost) == (3 * cost.n_dec + cost.n_head) * 4


def test_a_failing_setting_is_reported_and_the_rest_still_written(bench, tokenizer_dir, tmp_path):
    r = bench.main(tiny_args(tmp_path, tokenizer_dir, "--skip", "rankers,profile,explain,eval,concurrent,finetune",
                             "--lora-targets", "no_such_proj", "q_proj,v_proj"))
    assert "no_such_proj" in r["errors"]["lora no_such_proj 32"]
    assert [x["targets"] for x in r["lora"]] == ["q_proj,v_proj"]
    saved = json.loads((tmp_path / "gpu-tiny-cpu.json").read_text())
    assert saved["errors"] == r["errors"] and "score" not in saved


@pytest.mark.integration
def test_default_tiny_run_on_movielens_has_realistic_prompts(bench, tmp_path):
    """The default --tiny path: cached SmolLM2 tokenizer, movielens-small titles (RECDEMO_DATA_DIR)."""
    real_data_root()
    r = bench.main(["--tiny", "--out", str(tmp_path), "--users", "2", "--skip",
                    "profile,explain,eval,concurrent,lora,finetune,together"])
    assert r["catalog"]["source"] == "movielens-small" and r["tokenizer"]["size"] == 49152
    assert r["model"]["vocab"] == 49152  # max(32000, tokenizer): SmolLM2's tokenizer stands in for LLaMA's
    assert 300 < r["score"]["prompt_tokens"] < 700  # history of 20 titles + profile, no candidates
    assert r["palr"]["prompt_tokens"] > 800  # ... plus the 50 candidates
    assert r["score"]["answer_tokens"] > 10  # the candidates' branching tokens, fed in one call


def test_targets_are_judged_on_gpu_figures_only(bench):
    r = {"gpu_figures": True, "score": {"p50_ms": 25.0, "p90_ms": 45.0},
         "score_batched": [{"batch": 4, "per_user_ms": 30.0}, {"batch": 16, "per_user_ms": 9.0}],
         "finetune": [{"lora_targets": "all-linear", "ratio": 0.30}], "memory": {"together_gb": 31.0},
         "eval": {"minutes_all_users": 12.0}}
    met = {k: v["met"] for k, v in bench.check_targets(r).items()}
    assert met["score rerank p50 (ms)"] is True and met["score rerank p90 (ms)"] is False
    assert met["score batched, per user at batch 16 (ms)"] is True  # the batch-16 row, not the batch-4 one
    assert met["run_finetune all-linear (share of the matmul limit)"] is False
    assert met["run_finetune q_proj,v_proj (share of the matmul limit)"] is None  # not measured
    assert met["serving and fine-tuning at once, peak (GB)"] is True
    assert met["evaluation of all amazon-beauty test users (minutes)"] is False
    assert {v["met"] for v in bench.check_targets({**r, "gpu_figures": False}).values()} == {None}


def test_unknown_skip_section_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="unknown section"):
        bench.main(["--tiny", "--out", str(tmp_path), "--skip", "rankers,lunch"])


def test_synthetic_evaluation_data_has_the_requested_size(bench):
    import gpu_setup
    assert gpu_setup.BEAUTY_SIZE == {"n_items": 12_101, "n_users": 22_332}
    d = gpu_setup.synthetic_like(n_items=500, n_users=120, seed=3)
    assert d.n_items == 500 and len(d.eval_cases("test")) == 120  # every user has a test case
    lengths = [len(s) for s in d.sequences]
    assert min(lengths) >= 3 and 7 < sum(lengths) / len(lengths) < 11  # amazon-beauty's ~9 a user
    assert all(len(set(s.tolist())) == len(s) for s in d.sequences)
