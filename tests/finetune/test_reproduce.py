"""`reproduce` end to end on the tiny random LLaMA and a toy dataset: the table's structure, every
ranker x adapter row, the same numbers as `evaluate` for the same adapter and users, the shipped
adapters untouched, and a rerun that reuses what is done."""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import PopularityRetriever, fake_cli_stack, make_tiny_llm, make_toy_dataset
from recdemo.config import PROJECT_ROOT, Config
from recdemo.finetune.reproduce import PAPERS, adapter_name, check_papers, run_folder, run_reproduce, table_rows
from recdemo.finetune.tasks import TASKS
from recdemo.llm.adapters import ADAPTER_NAME_RE
from recdemo.llm.rankers import RANKERS

SHIPPED = PROJECT_ROOT / "checkpoints" / "adapters"
USERS = 4


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def small_config(tmp_path, **reproduce) -> Config:
    cfg = Config()
    ft = replace(cfg.finetune, steps=1, batch_size=1, eval_every=0, eval_users=0, eval_candidates=6, n_candidates=6,
                 rank_eval=False, max_length=512)
    rep = replace(cfg.reproduce, users=USERS, out=str(tmp_path / "run"), **reproduce)
    # the service's own adapter folder stays the shipped one: the run must not write there
    return replace(cfg, finetune=ft, reproduce=rep, retrieval=replace(cfg.retrieval, n_candidates=8),
                   llm=replace(cfg.llm, model="tiny-llama", device="cpu", fusion_dir=str(tmp_path / "fusion"),
                               fusion_cache_dir=str(tmp_path / "fusion-cache")))


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tiny_tokenizer):
    """One small run (shared by the tests below: it fine-tunes four adapters)."""
    tmp_path = tmp_path_factory.mktemp("reproduce")
    dataset = make_toy_dataset(n_items=40, n_users=16, seed=0)
    retriever = PopularityRetriever(dataset)
    cfg = small_config(tmp_path)
    shipped_before = tree_digest(SHIPPED)
    lines = []
    llm = make_tiny_llm(tiny_tokenizer)
    table = run_reproduce(cfg, dataset, retriever, llm, log=lines.append)
    return dict(table=table, cfg=cfg, dataset=dataset, retriever=retriever, shipped_before=shipped_before,
                tmp=tmp_path, log=lines, llm=llm)


def test_every_paper_names_a_real_task_and_ranker():
    for paper in PAPERS.values():
        assert paper.task in TASKS and paper.ranker in RANKERS
    assert [p.task for p in check_papers(Config().reproduce.papers)] == [
        "recommend", "recommend_retrieval", "genrec", "tallrec"]
    with pytest.raises(ValueError, match="unknown paper"):
        check_papers("palr-v1,bert4rec")


def test_adapter_names_are_valid_and_never_a_shipped_name():
    long = "x" * 80
    for paper in PAPERS.values():
        for ds in ("movielens-small", long, "my data/set"):
            name = adapter_name(ds, paper)
            assert ADAPTER_NAME_RE.match(name) and name.startswith("repro-") and name.endswith(paper.key)
    shipped = {p.name for p in SHIPPED.iterdir()}
    assert not {adapter_name(d, p) for d in ("movielens-small", "amazon-beauty") for p in PAPERS.values()} & shipped


def test_the_default_run_folder_is_outside_the_checkpoints():
    cfg = Config()
    folder = run_folder(replace(cfg, llm=replace(cfg.llm, model="meta-llama/Llama-2-7b-hf")), "amazon-beauty")
    assert folder == PROJECT_ROOT / "runs" / "reproduce" / "amazon-beauty-meta-llama--Llama-2-7b-hf"


def test_the_table_has_every_ranker_and_adapter_row(reproduced):
    table, cfg = reproduced["table"], reproduced["cfg"]
    keys = [r["key"] for r in table["rows"]]
    assert keys == ["sasrec", "palr-base", "palr-palr-v1", "palr-palr-v2", "genrec-base", "genrec-genrec",
                    "tallrec-base", "tallrec-tallrec"]
    assert {r["adapter"] for r in table["rows"] if r["paper"]} == {a["adapter"] for a in table["adapters"]}
    for row in table["rows"]:
        assert set(row["metrics"]) == {"hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr", "users"}
        assert row["metrics"]["users"] == USERS and row["protocol"]
        assert (row["command"] is None) == (row["ranker"] is None)
    rows = {r["key"]: r["metrics"] for r in table["rows"]}
    assert rows["sasrec"]["hr@10"] > 0 and rows["tallrec-base"]["hr@10"] > 0  # the cross-checks compare hits
    assert (table["users"], table["steps"], table["eval_seed"]) == (USERS, 1, 0)
    assert table["dataset_hash"] == reproduced["dataset"].content_hash and table["model"] == "tiny-llama"
    assert [s["stage"] for s in table["stages"]][:5] == ["load the model", "fine-tune palr-v1", "fine-tune palr-v2",
                                                       "fine-tune genrec", "fine-tune tallrec"]
    assert all(s["seconds"] >= 0 for s in table["stages"])
    folder = Path(cfg.reproduce.out)
    assert json.loads((folder / "results.json").read_text()) == table
    md = (folder / "results.md").read_text()
    assert "| SASRec |" in md and "tallrec + tallrec adapter" in md and table["commands"]["reproduce"] in md
    assert not list(folder.rglob(".*.tmp-*")) and not list(folder.rglob("*.partial"))


def test_commands_name_what_the_run_did(reproduced):
    table, cfg = reproduced["table"], reproduced["cfg"]
    cmd = table["commands"]
    assert cmd["reproduce"].startswith("python -m recdemo reproduce --dataset movielens-small")
    assert f"--steps 1 --users {USERS}" in cmd["reproduce"] and "--llm tiny-llama" in cmd["reproduce"]
    assert "--tasks recommend_retrieval" in cmd["finetune"]["palr-v2"]
    assert "--steps 1" in cmd["finetune"]["palr-v2"] and "--no-rank-eval" in cmd["finetune"]["palr-v2"]
    adapters = str(Path(cfg.reproduce.out) / "adapters")
    assert cmd["evaluate"]["genrec-genrec"].startswith(f"RECDEMO_ADAPTER_DIR={adapters} python -m recdemo evaluate")
    base = cmd["evaluate"]["genrec-base"]
    assert "--adapter none --no-fuse" in base and "--candidates 8" in base and "RECDEMO_ADAPTER_DIR" not in base


def test_the_numbers_are_what_evaluate_gives(reproduced, tiny_tokenizer, monkeypatch, capsys):
    """The tallrec adapter's row and the bare palr row, recomputed by `evaluate --stage rerank --no-fuse`
    on a freshly built model (so the run's in-place training left nothing behind)."""
    from recdemo.cli.evaluate import cli_rerank

    table, tmp = reproduced["table"], reproduced["tmp"]
    rows = {r["key"]: r for r in table["rows"]}
    for key in ("tallrec-tallrec", "palr-base"):
        row = rows[key]
        cfg = fake_cli_stack(monkeypatch, tmp / key, reproduced["dataset"], reproduced["retriever"],
                             make_tiny_llm(tiny_tokenizer))
        cfg = replace(cfg, llm=replace(cfg.llm, ranker=row["ranker"], adapter=row["adapter"] or "none",
                                       adapter_dir=str(Path(reproduced["cfg"].reproduce.out) / "adapters")),
                      retrieval=replace(cfg.retrieval, n_candidates=8))
        out = tmp / f"{key}.json"
        args = argparse.Namespace(split="test", users=USERS, seed=0, no_fuse=True, batch_size=1, profile="heuristic",
                                  json=str(out))
        assert cli_rerank(args, cfg) == 0
        got = json.loads(out.read_text())
        assert got["adapter"] == row["adapter"]
        assert {k: got[k] for k in row["metrics"]} == row["metrics"]
        sasrec = rows["sasrec"]["metrics"]
        assert (got["baseline_ndcg@10"], got["baseline_hr@10"], got["baseline_mrr"]) == (
            sasrec["ndcg@10"], sasrec["hr@10"], sasrec["mrr"])


def test_the_model_trained_in_place_keeps_its_base_weights(reproduced, tiny_tokenizer):
    """Fine-tuning runs on the model itself (no copy of a 7B base): its base weights never change."""
    import torch

    fresh = make_tiny_llm(tiny_tokenizer).model.state_dict()
    used = reproduced["llm"].model
    base = used.get_base_model() if hasattr(used, "get_base_model") else used  # the service wrapped it for adapters
    weights = {k.replace("base_layer.", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    assert weights.keys() == fresh.keys()
    assert all(torch.equal(weights[k], fresh[k]) for k in fresh)
    # and no training LoRA is left in it: only the adapters the service loaded from the run folder
    names = {name for m in base.modules() if hasattr(m, "lora_A") for name in m.lora_A}
    assert names and not any(name == "default" for name in names)


def test_shipped_adapters_are_untouched(reproduced):
    assert tree_digest(SHIPPED) == reproduced["shipped_before"]
    for a in reproduced["table"]["adapters"]:
        assert Path(a["path"]).parent == Path(reproduced["cfg"].reproduce.out) / "adapters"


def test_a_rerun_reuses_the_finished_stages(reproduced, tiny_tokenizer):
    cfg = reproduced["cfg"]
    lines = []
    again = run_reproduce(cfg, reproduced["dataset"], reproduced["retriever"], make_tiny_llm(tiny_tokenizer),
                          log=lines.append)
    assert all(s.get("reused") for s in again["stages"][1:])
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in reproduced["table"]["rows"]]
    # more users: the adapter is reused, its rows are scored again
    more = replace(cfg, reproduce=replace(cfg.reproduce, users=USERS + 2, papers=["tallrec"]))
    third = run_reproduce(more, reproduced["dataset"], reproduced["retriever"], make_tiny_llm(tiny_tokenizer),
                          log=lines.append)
    assert [a["reused"] for a in third["adapters"]] == [True]
    assert [(r["key"], r["reused"]) for r in third["rows"]] == [
        ("sasrec", False), ("tallrec-base", False), ("tallrec-tallrec", False)]
    assert third["users"] == USERS + 2
