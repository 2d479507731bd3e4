"""What one running app shares between all browser sessions: the LLM service (one base model for
every dataset), one Recommender per dataset, the datasets uploaded in this process, the
fine-tune queue, and the warm-up status. No model logic: everything is delegated to
``recdemo.pipeline.Recommender`` and ``recdemo.finetune.loop.run_finetune``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from recdemo.config import Config
from recdemo.data.dataset import BUILTIN_FOLDERS
from recdemo.errors import ModelNotFound
from recdemo.finetune.tasks import TASKS as TASKS_REGISTRY, task_names
from recdemo.finetune.loop import FineTuneSpec, run_finetune
from recdemo.llm import rankers
from recdemo.app.jobs import FINISHED, FineTuneQueue, Job
from recdemo.app.uploads import check_name, save_upload

log = logging.getLogger("recdemo.app")

# The two domains the demo offers out of the box (other built-ins work via RECDEMO_DATASET).
DOMAINS = {"movielens-small": "Movies · MovieLens (small)", "amazon-beauty": "Products · Amazon Beauty"}
# The fine-tune panel's task choices with their labels, and the ranker names: both from their registries.
TASKS = {name: TASKS_REGISTRY[name].label for name in task_names()}
RANKERS = list(rankers.RANKERS)
USER_ERRORS = (ValueError, ModelNotFound, FileNotFoundError, KeyError)  # DataError is a ValueError


def friendly_error(e: BaseException) -> str:
    """One sentence for the page. A user's mistake is one log line; only an unexpected error
    writes its traceback to the server log (never to the user)."""
    if isinstance(e, USER_ERRORS):
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        log.info("user error (%s): %s", type(e).__name__, msg)
        return msg or type(e).__name__
    if isinstance(e, MemoryError):
        log.warning("out of memory: %s", e)
        return "The server ran out of memory. Try a smaller model, fewer candidates or a shorter history."
    log.error("unexpected error: %s", "".join(traceback.format_exception(e)))
    return f"Something went wrong ({type(e).__name__}: {e}). The details are in the server log."


class AppContext:
    """Shared state of the app. ``recommender_factory(name, folder|None)`` and ``service`` may be
    injected (tests use fakes); by default they come from recdemo.pipeline / recdemo.llm.service."""

    def __init__(self, cfg: Config, *, service=None,
                 recommender_factory: Callable[[str, str | None], object] | None = None,
                 finetune_runner: Callable | None = None, upload_root: str | None = None):
        self.cfg = cfg
        self._service = service
        self._factory = recommender_factory
        self._finetune_runner = finetune_runner
        self._lock = threading.Lock()
        self._recs: dict[str, object] = {}
        self._rec_locks: dict[str, threading.Lock] = {}
        self.uploads: dict[str, str] = {}  # dataset name -> folder (this process only)
        self._local: str | None = None  # `demo --data-dir FOLDER`: that folder is the default dataset
        if cfg.data.data_dir:
            self._local = Path(cfg.data.data_dir).expanduser().resolve().name
            self.uploads[self._local] = str(Path(cfg.data.data_dir).expanduser().resolve())
        self._upload_root = Path(upload_root or tempfile.mkdtemp(prefix="recdemo-uploads-"))
        self.jobs = FineTuneQueue(self._run_job, friendly_error)
        self.model_ready = threading.Event()
        self.warm_done = threading.Event()  # the throw-away first request has finished (benchmarks wait)
        self.started = time.time()
        self._warm: dict = {"state": "idle", "message": "", "seconds": None}
        self._prep: dict[str, dict] = {}  # dataset -> {"state": preparing|ready|error, "message", ...}
        self._warm_thread: threading.Thread | None = None

    # -- shared objects --
    @property
    def service(self):
        with self._lock:
            if self._service is None:
                from recdemo.llm.service import LLMService
                self._service = LLMService(self.cfg.llm)
            return self._service

    def default_dataset(self) -> str:
        if self._local:
            return self._local
        return self.cfg.data.dataset if self.cfg.data.dataset in BUILTIN_FOLDERS else "movielens-small"

    def datasets(self, uploads: list[str] | None = None) -> list[tuple[str, str]]:
        """(label, name) for the dataset selectors: the two domains, the configured one, and the
        given uploads (a browser session sees its own uploads, not other visitors')."""
        names = list(DOMAINS)
        if self.default_dataset() not in names:
            names.append(self.default_dataset())
        out = [(DOMAINS.get(n, n), n) for n in names]
        out += [(f"Uploaded · {n}", n) for n in uploads or [] if n in self.uploads and n != self._local]
        return out

    def recommender(self, name: str):
        """The Recommender for a dataset, built once (callers for the same name wait for it)."""
        with self._lock:
            if name in self._recs:
                return self._recs[name]
            if name not in BUILTIN_FOLDERS and name not in self.uploads:
                raise ValueError(f"Unknown dataset {name!r}. Pick one from the list, or upload "
                                 "interactions.csv and items.csv in the side panel.")
            lock = self._rec_locks.setdefault(name, threading.Lock())
        with lock:
            with self._lock:
                if name in self._recs:
                    return self._recs[name]
            rec = self._build(name)
            with self._lock:
                self._recs[name] = rec
            return rec

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._recs

    def _build(self, name: str):
        folder = self.uploads.get(name)
        if self._factory is not None:
            return self._factory(name, folder)
        from recdemo.pipeline.recommender import Recommender

        if folder is None:
            return Recommender.from_config(self.cfg, dataset_name=name, data_dir=None, service=self.service)
        return Recommender.from_config(self.cfg, dataset_name=name, data_dir=folder, service=self.service)

    # -- adapters --
    def adapters(self) -> list[str]:
        """Adapters the service can activate (listing them does not load the model)."""
        return sorted(self.service.available_adapters())

    # -- preparing a dataset (search index, SASRec) and the model, in the background --
    def prepare(self, name: str) -> dict:
        """Start building ``name``'s search index and retriever in a background thread (once);
        returns its state. Events check ``preparing(name)`` instead of blocking for minutes."""
        with self._lock:
            state = self._prep.get(name)
            if state is not None and state["state"] != "error":
                return dict(state)
            state = {"state": "preparing", "message": f"Loading {DOMAINS.get(name, name)}…",
                     "started": time.time(), "seconds": None}
            self._prep[name] = state
        threading.Thread(target=self._prepare, args=(name, state), name=f"prepare-{name}", daemon=True).start()
        return dict(state)

    def _prepare(self, name: str, state: dict) -> None:
        try:
            rec = self.recommender(name)
            state["message"] = f"Building the search index for {DOMAINS.get(name, name)}…"
            getattr(rec, "text_index", None)  # lazy property: built (or read from cache) here
            problem = self._checkpoint_problem(rec)
            state["message"] = (f"Training SASRec for {name} ({problem}); `python -m recdemo train "
                                f"--dataset {name}` does this ahead of time…" if problem
                                else "Loading the SASRec retriever…")
            getattr(rec, "retriever", None)
            state.update(state="ready", message="Ready", seconds=time.time() - state["started"])
        except Exception as e:  # noqa: BLE001 - shown in the page
            state.update(state="error", message=friendly_error(e), seconds=time.time() - state["started"])

    def _checkpoint_problem(self, rec) -> str | None:
        dataset = getattr(rec, "dataset", None)
        if not hasattr(dataset, "content_hash"):
            return None
        try:
            from recdemo.retrieval.checkpoint import checkpoint_problem, locate
            return checkpoint_problem(dataset, *locate(dataset, self.cfg.retrieval))
        except Exception:  # noqa: BLE001 - only used for the message
            return None

    def ensure_ready(self, name: str, wait: float = 2.0) -> str | None:
        """Start preparing ``name`` if needed and wait up to ``wait`` seconds. Returns a sentence
        while it is still being prepared, None when ready; raises ValueError if it failed."""
        if name not in BUILTIN_FOLDERS and name not in self.uploads:
            raise ValueError(f"Unknown dataset {name!r}. Pick one from the list, or upload "
                             "interactions.csv and items.csv in the side panel.")
        self.prepare(name)
        deadline = time.time() + wait
        while True:
            state = self.prep_state(name) or {}
            if state.get("state") == "error":
                raise ValueError(state["message"])
            if state.get("state") == "ready":
                return None
            if time.time() >= deadline:
                return self.preparing(name)
            time.sleep(0.05)

    def preparing(self, name: str) -> str | None:
        """A sentence while ``name`` is still being prepared, else None."""
        with self._lock:
            state = self._prep.get(name)
        if state is None or state["state"] != "preparing":
            return None
        return (f"{DOMAINS.get(name, name)} is still being prepared ({time.time() - state['started']:.0f} s): "
                f"{state['message']} Please try again in a moment.")

    def prep_state(self, name: str) -> dict | None:
        with self._lock:
            state = self._prep.get(name)
            return dict(state) if state else None

    def start_warmup(self, name: str | None = None) -> None:
        """At launch: prepare the default dataset, then load the model, then one throw-away request."""
        name = name or self.default_dataset()
        if self._warm_thread is not None:
            return
        self._warm.update(state="loading", message=f"Loading {DOMAINS.get(name, name)}…")
        self._warm_thread = threading.Thread(target=self._warmup, args=(name,), name="warmup", daemon=True)
        self._warm_thread.start()

    def _warmup(self, name: str) -> None:
        t0 = time.time()
        try:
            self.prepare(name)
            self._warm.update(message="Loading the language model…")
            _ = self.service.llm  # the lazy load happens here, not in the first click
            self.model_ready.set()
            self._warm.update(state="ready", message="Ready", seconds=time.time() - t0)
            while self.preparing(name):
                time.sleep(0.2)
            # One throw-away request so the first real click does not pay for lazy initialisation.
            rec = self.recommender(name)
            history = rec.random_user_history(seed=0, max_items=5)
            rec.recommend(history, ranker=self.cfg.llm.ranker, n_candidates=20, k=3)
        except Exception as e:  # noqa: BLE001 - reported in the page header
            if not self.model_ready.is_set():
                self._warm.update(state="error", message=friendly_error(e), seconds=time.time() - t0)
            else:
                log.warning("warm-up request failed: %s", e)
        finally:
            self.model_ready.set()  # never leave callers waiting on a failed warm-up
            self.warm_done.set()

    def status(self, dataset: str | None = None) -> dict:
        """The model's state, and ``dataset``'s preparation when it is not ready yet."""
        out = {**self._warm, "uptime_s": round(time.time() - self.started, 1),
               "model_ready": self.model_ready.is_set(), "warmed_up": self.warm_done.is_set(),
               "finetune_running": self.jobs.running()}
        prep = self.prep_state(dataset) if dataset else None
        if prep and prep["state"] != "ready" and out["state"] != "loading":
            out.update(state="loading" if prep["state"] == "preparing" else "error", message=prep["message"])
        return out

    def wait_ready(self, timeout: float) -> bool:
        if self._warm_thread is None:
            return True
        return self.model_ready.wait(timeout)

    # -- uploads --
    def add_upload(self, interactions_path: str, items_path: str, name: str) -> dict:
        """Validate an uploaded pair of files and register them as a dataset named ``name``."""
        name = check_name(name, "Dataset")
        if name in BUILTIN_FOLDERS or name in self.uploads:
            raise ValueError(f"A dataset named {name!r} already exists; choose another name.")
        folder, summary = save_upload(self._upload_root, interactions_path, items_path, name,
                                      self.cfg.limits.max_upload_mb, self.cfg.limits.max_field_chars)
        with self._lock:
            self.uploads[name] = folder
        return summary

    # -- fine-tuning (runs on the queue's worker thread) --
    def finetune_spec(self, params: dict) -> FineTuneSpec:
        """The run a request from the fine-tune panel asks for: cfg.finetune's defaults with the
        panel's values, checked by FineTuneSpec and the config's limits (ValueError: a sentence)."""
        name = check_name(params.get("adapter"), "Adapter")
        steps = _whole(params.get("steps"), "Steps")
        if steps > self.cfg.limits.max_finetune_steps:
            raise ValueError(f"Steps: at most {self.cfg.limits.max_finetune_steps} per fine-tune on this server.")
        lr = float(params.get("lr") or 0)
        if not 0 < lr < 1:  # FineTuneSpec does not check the learning rate (yet)
            raise ValueError("The learning rate must be a small positive number, e.g. 0.0002.")
        defaults = dataclasses.asdict(self.cfg.finetune)
        given = {k: v for k, v in params.items() if v is not None}
        wanted = {"tasks": list(params.get("tasks") or []), "steps": steps, "lr": lr,
                  "lora_r": _whole(given.get("lora_r", defaults["lora_r"]), "LoRA rank"),
                  "eval_users": _whole(given.get("eval_users", defaults["eval_users"]), "Validation users"),
                  "out": str(Path(self.cfg.llm.adapter_dir) / name), "resume": False}
        return FineTuneSpec(**{**defaults, **wanted})

    def _run_job(self, job: Job, progress, cancel: threading.Event) -> dict:
        p, spec = job.params, job.params["spec"]
        progress({"step": 0, "total": spec.steps, "phase": "preparing the dataset and retrieval model"})
        rec = self.recommender(p["dataset"])
        dataset = getattr(rec, "dataset", None)
        retriever = getattr(rec, "retriever", None)
        if self._finetune_runner is not None:
            return self._finetune_runner(spec, dataset, retriever, progress, cancel)
        self.model_ready.wait(600)  # share the base model with the app, never load a second copy
        result = run_finetune(spec, dataset, self.service, retriever, progress=progress, cancel=cancel)
        if result.get("status") == "done":
            try:
                if result.get("adapter", p["adapter"]) not in self.service.available_adapters():
                    self.service.register_adapter(result.get("path", spec.out))
            except Exception:  # noqa: BLE001 - run_finetune registers it; this is a safety net
                log.warning("could not register the new adapter", exc_info=True)
        return result

    def submit_finetune(self, params: dict) -> Job:
        """Queue a fine-tune; ValueError with a sentence when the request cannot run."""
        spec = self.finetune_spec(params)
        name = Path(spec.out).name
        if name in self.adapters():
            raise ValueError(f"An adapter named {name!r} already exists; choose another name so the "
                             "existing one keeps working.")
        dataset = params.get("dataset")
        if dataset not in BUILTIN_FOLDERS and dataset not in self.uploads:
            raise ValueError("Choose a dataset to fine-tune on (or upload one above).")
        if any(s["params"].get("adapter") == name for s in self.jobs.active()):
            raise ValueError(f"A fine-tune that writes {name!r} is already queued.")
        return self.jobs.submit({"dataset": dataset, "adapter": name, "tasks": spec.tasks, "steps": spec.steps,
                                 "lora_r": spec.lora_r, "lr": spec.lr, "eval_users": spec.eval_users,
                                 "spec": spec})

    def job_running(self, job_id: str | None) -> bool:
        """Whether ``job_id`` is still queued or running (a session runs one fine-tune at a time)."""
        snap = self.jobs.snapshot(job_id) if job_id else None
        return snap is not None and snap["status"] not in FINISHED

    def close(self, timeout: float = 120.0) -> None:
        self.jobs.shutdown()
        if isinstance(self._warm_thread, threading.Thread):  # torch threads must not outlive Python
            self._warm_thread.join(timeout)
        shutil.rmtree(self._upload_root, ignore_errors=True)


def _whole(value, what: str) -> int:
    """A whole number from a form field (Gradio's Number gives floats, or None when cleared)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: enter a whole number.") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{what}: enter a whole number.")
    return int(number)
