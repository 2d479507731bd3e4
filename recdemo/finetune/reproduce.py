"""Reproduce the papers in one run: `python -m recdemo reproduce --dataset NAME --model MODEL [--steps N] [--users N]`.

``run_reproduce`` is the recipe, one stage per function below it:
1. ``finetune_papers``: one LoRA adapter per paper of ``PAPERS`` (its fine-tune task from
   ``finetune.tasks.TASKS``) with the project's own loop (``run_finetune``), into
   ``<run>/adapters/repro-<dataset>-<paper>``: never the shipped ``checkpoints/adapters`` (the app
   lists only that folder, and the ``repro-`` prefix keeps the names apart from shipped ones).
   The model is trained in place (no copy of a 7B base); its LoRA layers are stripped afterwards.
2. ``evaluate_rows``: on one seeded sample of leave-one-out test users (``eval.core.sample_cases``),
   SASRec's own top-k, then every ranker the papers serve on the bare base model and with each of its
   papers' adapters, exactly as ``evaluate --stage rerank --no-fuse`` scores them (the LLM alone
   reorders SASRec's top-N; a target SASRec did not retrieve is a miss, so every row is judged on
   the same full-ranking terms as SASRec's).
3. ``build_table``: one table (JSON + Markdown, atomic writes) with the commands behind every number,
   the dataset's content hash, the model, steps, users, seeds and the wall time of every stage.

Resumable: each finished stage leaves a record in ``<run>/stages/`` (with a fingerprint of what it
depends on); a rerun reuses the records that still match and recomputes the rest; an interrupted
fine-tune continues from its ``.partial`` folder (``run_finetune``). The table is written only at
the end, whole.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from recdemo.config import PROJECT_ROOT, Config
from recdemo.eval.core import retriever_candidates, sample_cases
from recdemo.eval.rerank_eval import evaluate_rerank
from recdemo.finetune import repro_report as report
from recdemo.finetune.loop import FineTuneSpec, run_finetune
from recdemo.llm.adapters import is_adapter_dir, read_meta, strip_lora_layers
from recdemo.llm.rankers import get_ranker
from recdemo.llm.service import LLMService
from recdemo.metrics import MISS, metrics_from_ranks
from recdemo.storage import write_json_atomically, write_text_atomically


@dataclass(frozen=True)
class Paper:
    key: str
    task: str  # finetune.tasks.TASKS
    ranker: str  # llm.rankers.RANKERS: the ranker whose prompt the task trains
    label: str


PAPERS: dict[str, Paper] = {p.key: p for p in (
    Paper("palr-v1", "recommend", "palr", "PALR v1 (Yang et al. 2023): name the next items"),
    Paper("palr-v2", "recommend_retrieval", "palr", "PALR v2 (Yang et al. 2023): pick them from candidates"),
    Paper("genrec", "genrec", "genrec", "GenRec (Ji et al. 2023): generate the next title"),
    Paper("tallrec", "tallrec", "tallrec", "TALLRec (Bao et al. 2023): will the user like it, yes/no"),
    Paper("llamarec", "rank", "score", "LlamaRec-style (Yue et al. 2023): pick from SASRec's list"),
)}


def check_papers(papers) -> list[Paper]:
    keys = [str(p).strip() for p in (papers.split(",") if isinstance(papers, str) else papers or ()) if str(p).strip()]
    unknown = [k for k in keys if k not in PAPERS]
    if unknown or not keys:
        raise ValueError(f"unknown paper(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(PAPERS)}")
    return [PAPERS[k] for k in dict.fromkeys(keys)]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.") or "x"


def run_folder(cfg: Config, dataset_name: str) -> Path:
    """``--out``, else ``runs/reproduce/<dataset>-<model>`` (a hub id or a folder's last name)."""
    if cfg.reproduce.out:
        return Path(cfg.reproduce.out)
    model = cfg.llm.model.rstrip("/")
    model = Path(model).name if Path(model).exists() else model.replace("/", "--")
    return PROJECT_ROOT / "runs" / "reproduce" / _safe(f"{dataset_name}-{model}")


def adapter_name(dataset_name: str, paper: Paper) -> str:
    """``repro-<dataset>-<paper>``: a valid adapter name (llm.adapters.ADAPTER_NAME_RE), never a shipped one's."""
    tail = f"-{paper.key}"
    return "repro-" + _safe(dataset_name)[:64 - len("repro-") - len(tail)] + tail


@dataclass
class Run:
    """What every stage needs."""
    cfg: Config
    folder: Path
    dataset: object
    retriever: object
    llm: object
    papers: list[Paper]
    log: object = print

    @property
    def adapters(self) -> Path:
        return self.folder / "adapters"

    def record(self, name: str) -> Path:
        return self.folder / "stages" / f"{name}.json"

    def reusable(self, name: str, fingerprint: dict) -> dict | None:
        """The stage's earlier record when it was made from the same inputs."""
        path = self.record(name)
        try:
            saved = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint else None

    def save(self, name: str, record: dict) -> dict:
        write_json_atomically(self.record(name), record)
        return record


def run_reproduce(cfg: Config, dataset, retriever, llm, log=print, setup: dict[str, float] | None = None) -> dict:
    """Fine-tune, evaluate and write the table (see the module doc); returns the table. ``setup``: the
    caller's own stages before this (name -> seconds, e.g. loading the data and SASRec)."""
    start = time.perf_counter()
    papers = check_papers(cfg.reproduce.papers)
    run = Run(cfg, run_folder(cfg, dataset.name), dataset, retriever, llm, papers, log)
    log(f"reproduce {', '.join(p.key for p in papers)} on {dataset.name} ({dataset.content_hash}) with "
        f"{llm.name} -> {run.folder}")
    stages = [{"stage": name, "seconds": round(seconds, 1)} for name, seconds in (setup or {}).items()]
    stages.append({"stage": "load the model", "seconds": round(float(getattr(llm, "load_seconds", 0.0) or 0.0), 1)})
    trained = finetune_papers(run)
    stages += [{"stage": f"fine-tune {r['paper']}", "seconds": r["seconds"], "reused": r["reused"]} for r in trained]
    rows = evaluate_rows(run, {r["paper"]: r for r in trained})
    stages += [{"stage": f"evaluate {r['label']}", "seconds": r["seconds"], "reused": r["reused"]} for r in rows]
    table = build_table(run, trained, rows, stages, time.perf_counter() - start)
    write_json_atomically(run.folder / "results.json", table)
    write_text_atomically(run.folder / "results.md", report.markdown(table))
    return table


# -- stage 1: the adapters --
def finetune_papers(run: Run) -> list[dict]:
    """One adapter per paper; the model is left without LoRA layers for the evaluation."""
    records = [finetune_paper(run, paper) for paper in run.papers]
    strip_lora(run.llm)
    return records


def finetune_spec(cfg: Config, paper: Paper, out: Path) -> FineTuneSpec:
    """The config's fine-tune settings for this paper's task, trained on the model itself (no copy)."""
    return FineTuneSpec(**{**asdict(cfg.finetune), "tasks": [paper.task], "out": str(out), "init_adapter": "",
                           "share_base": "share"})


def finetune_paper(run: Run, paper: Paper) -> dict:
    name = adapter_name(run.dataset.name, paper)
    out = run.adapters / name
    spec = finetune_spec(run.cfg, paper, out)
    # the precision trained in is part of the adapter (a CPU float32 one is not a GPU bfloat16 one)
    fingerprint = {"spec": spec.fingerprint(run.dataset.content_hash, run.llm.name), "dtype": str(run.llm.dtype),
                   "device": run.llm.device.type}
    command = report.finetune_command(run.cfg, paper.task, str(out))
    saved = run.reusable(f"finetune-{paper.key}", fingerprint)
    if saved is not None and is_adapter_dir(out):
        run.log(f"fine-tune {paper.key}: reusing {out}")
        return {**saved, "path": str(out), "command": command, "reused": True}  # the folder may have moved
    run.log(f"fine-tune {paper.key} (task {paper.task}, {spec.steps} steps) -> {out}")
    start = time.perf_counter()
    result = run_finetune(spec, run.dataset, SimpleNamespace(llm=run.llm, lock=threading.RLock()), run.retriever)
    if result["status"] != "done":
        raise RuntimeError(f"fine-tuning {paper.key} stopped: {result.get('reason', result['status'])}")
    record = {"paper": paper.key, "label": paper.label, "task": paper.task, "ranker": paper.ranker, "adapter": name,
              "path": str(out), "fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 1),
              "steps": result["steps"], "examples": result["examples"], "tokens_per_s": result["tokens_per_s"],
              "metrics_before": result["metrics_before"], "metrics_after": result["metrics_after"],
              "created": read_meta(out).get("created"), "command": command}
    return {**run.save(f"finetune-{paper.key}", record), "reused": False}


def strip_lora(llm) -> None:
    """Take the training LoRA layers out of the model (run_finetune trained it in place), so the
    evaluation's bare-model rows run the base weights and the service can load the adapters."""
    strip_lora_layers(llm.model)
    llm.model.eval()


# -- stage 2: the rows --
def table_rows(run: Run) -> list[dict]:
    """SASRec, then per ranker (in the papers' order) the bare model and each of its papers' adapters."""
    rows = [{"key": "sasrec", "label": "SASRec", "ranker": None, "paper": None, "adapter": None}]
    for ranker in dict.fromkeys(p.ranker for p in run.papers):
        rows.append({"key": f"{ranker}-base", "label": f"{ranker}, base model", "ranker": ranker, "paper": None,
                     "adapter": None})
        rows += [{"key": f"{ranker}-{p.key}", "label": f"{ranker} + {p.key} adapter", "ranker": ranker,
                  "paper": p.key, "adapter": adapter_name(run.dataset.name, p)}
                 for p in run.papers if p.ranker == ranker]
    return rows


def evaluate_rows(run: Run, trained: dict[str, dict]) -> list[dict]:
    service = LLMService(run.cfg.llm, llm=run.llm)
    for record in trained.values():
        service.register_adapter(record["path"])  # by the folder name the rows and commands use
    out = []
    for row in table_rows(run):
        # a retrained adapter (same settings, new weights) is a new adapter: its rows are scored again
        adapter_fp = [trained[row["paper"]][k] for k in ("fingerprint", "created")] if row["paper"] else None
        fingerprint = {**eval_fingerprint(run), "ranker": row["ranker"], "adapter": row["adapter"],
                       "adapter_fingerprint": adapter_fp}
        command = None if row["ranker"] is None else report.evaluate_command(run.cfg, row["ranker"], row["adapter"],
                                                                            str(run.adapters))
        saved = run.reusable(f"evaluate-{row['key']}", fingerprint)
        if saved is not None:
            out.append({**saved, "command": command, "reused": True})
            continue
        run.log(f"evaluate {row['label']} on {run.cfg.reproduce.users} test users")
        start = time.perf_counter()
        metrics, details = (sasrec_metrics(run) if row["ranker"] is None else ranker_metrics(run, service, row))
        record = {**row, "metrics": metrics, "details": details, "protocol": protocol(run, row),
                  "fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 1), "command": command}
        out.append({**run.save(f"evaluate-{row['key']}", record), "reused": False})
    return out


def sasrec_checkpoint(retriever) -> dict:
    """Which SASRec checkpoint made the candidates (a retrained one makes every row stale)."""
    meta = getattr(retriever, "meta", None) or {}
    return {k: meta.get(k) for k in ("dataset_hash", "model", "created")}


def eval_fingerprint(run: Run) -> dict:
    cfg = run.cfg
    return {"dataset_hash": run.dataset.content_hash, "sasrec": sasrec_checkpoint(run.retriever),
            "model": run.llm.name, "dtype": str(run.llm.dtype),
            "device": str(run.llm.device), "users": cfg.reproduce.users, "seed": cfg.reproduce.eval_seed,
            "batch_size": cfg.reproduce.eval_batch_size, "n_candidates": cfg.retrieval.n_candidates,
            "k": cfg.llm.n_results}


def protocol(run: Run, row: dict) -> str:
    if row["ranker"] is None:
        return report.PROTOCOL_SASREC
    if row["ranker"] == "genrec":  # as eval/rerank_eval.py: the one ranker that is not limited to the candidates
        return report.PROTOCOL_GENERATIVE
    return report.PROTOCOL_LLM.format(n=run.cfg.retrieval.n_candidates)


def metric_cuts(k: int) -> list[int]:
    return sorted({5, k})


def sasrec_metrics(run: Run) -> tuple[dict, dict]:
    """SASRec's own top-k on the same users: what every rerank row's ``baseline_*`` holds too."""
    k, n = run.cfg.llm.n_results, run.cfg.retrieval.n_candidates
    cases = sample_cases(run.dataset, "test", run.cfg.reproduce.users, run.cfg.reproduce.eval_seed)
    candidates = retriever_candidates(run.retriever, n)
    ranks = []
    for case in cases:
        top = [c.index for c in candidates(case)][:k]
        ranks.append(top.index(int(case.target)) if int(case.target) in top else MISS)
    return metrics_from_ranks(ranks, metric_cuts(k)), {"k": k, "n_candidates": n}


def ranker_metrics(run: Run, service, row: dict) -> tuple[dict, dict]:
    """``evaluate --stage rerank --no-fuse``'s numbers for this ranker and adapter (the LLM alone)."""
    cfg = run.cfg
    ranker = get_ranker(row["ranker"], service, run.dataset, run.retriever, adapter=row["adapter"], fuse=False)
    details = evaluate_rerank(ranker, run.dataset, run.retriever, split="test", users=cfg.reproduce.users,
                              seed=cfg.reproduce.eval_seed, n_candidates=cfg.retrieval.n_candidates,
                              k=cfg.llm.n_results, weight=1.0, batch_size=cfg.reproduce.eval_batch_size)
    keys = [f"{m}@{c}" for c in metric_cuts(cfg.llm.n_results) for m in ("hr", "ndcg")] + ["mrr", "users"]
    return {key: details[key] for key in keys}, details


# -- stage 3: the table --
def build_table(run: Run, trained: list[dict], rows: list[dict], stages: list[dict], seconds: float) -> dict:
    cfg, llm = run.cfg, run.llm
    return {
        "folder": str(run.folder), "dataset": run.dataset.name, "dataset_hash": run.dataset.content_hash,
        "model": llm.name,
        "device": str(llm.device), "dtype": str(llm.dtype).replace("torch.", ""),
        "steps": cfg.finetune.steps, "users": rows[0]["metrics"]["users"], "users_requested": cfg.reproduce.users,
        "eval_seed": cfg.reproduce.eval_seed, "finetune_seed": cfg.finetune.seed, "k": cfg.llm.n_results,
        "n_candidates": cfg.retrieval.n_candidates, "split": "test",
        "sasrec_checkpoint": sasrec_checkpoint(run.retriever),
        "protocol": (f"leave-one-out, test split, full ranking: SASRec ranks the whole catalog (history excluded); "
                     f"each LLM ranker alone (no fusion) reorders SASRec's top-{cfg.retrieval.n_candidates} "
                     + ("(genrec generates from the catalog) " if any(r["ranker"] == "genrec" for r in rows) else "")
                     + f"and its list is cut at {cfg.llm.n_results}; a target outside the list is a miss "
                     "(0 in every metric)"),
        "rows": [{k: r[k] for k in ("key", "label", "ranker", "paper", "adapter", "metrics", "protocol", "command",
                                    "seconds", "reused")} for r in rows],
        "adapters": [{k: a[k] for k in ("paper", "label", "task", "ranker", "adapter", "path", "steps", "examples",
                                        "tokens_per_s", "seconds", "reused", "command")} for a in trained],
        "stages": stages, "wall_seconds": round(seconds, 1),
        "commands": {"reproduce": report.reproduce_command(cfg, str(run.folder)),
                     "finetune": {a["paper"]: a["command"] for a in trained},
                     "evaluate": {r["key"]: r["command"] for r in rows if r["command"]}},
        "settings": {"finetune": {**asdict(cfg.finetune), "tasks": None, "out": None},
                     "reproduce": asdict(cfg.reproduce)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
