"""What one running app shares between all browser sessions: the LLM service (one base model for
every dataset), one Recommender per dataset, the datasets uploaded in this process, the
fine-tune queue, the warm-up status and the cleanup timer. No model logic: everything is
delegated to ``recdemo.pipeline.Recommender`` and ``recdemo.finetune.loop.run_finetune``.

Uploads, and adapters fine-tuned on them, belong to the browser session that made them (its
Gradio ``session_hash``): they are stored as ``<name>@<session digest>``, a key no request can
name, and every lookup goes through ``dataset_key(name, session)``; another session (or the API,
which has none) gets the same "unknown" answer as for a name nobody uploaded.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from recdemo.config import Config
from recdemo.data.dataset import BUILTIN_FOLDERS, forget_dataset
from recdemo.errors import ModelNotFound
from recdemo.finetune.tasks import TASKS as TASKS_REGISTRY, task_names
from recdemo.finetune.loop import FineTuneSpec, run_finetune
from recdemo.llm import rankers
from recdemo.llm.adapters import check_adapter_name
from recdemo.retrieval.train import TrainingCancelled
from recdemo.app import cleanup
from recdemo.app.jobs import FINISHED, FineTuneQueue, Job
from recdemo.app.sessions import SessionStore, display_name, private_key, session_digest
from recdemo.app.uploads import check_name, save_upload
from recdemo.llm.service import LLMService
from recdemo.pipeline.recommender import Recommender
from recdemo.retrieval.checkpoint import checkpoint_problem, locate

log = logging.getLogger("recdemo.app")

# The two domains the demo offers out of the box (other built-ins work via RECDEMO_DATASET).
DOMAINS = {"movielens-small": "Movies · MovieLens (small)", "amazon-beauty": "Products · Amazon Beauty"}
# The fine-tune panel's task choices with their labels, and the ranker names: both from their registries.
TASKS = {name: TASKS_REGISTRY[name].label for name in task_names()}
RANKERS = list(rankers.RANKERS)
USER_ERRORS = (ValueError, ModelNotFound, FileNotFoundError, KeyError)  # DataError is a ValueError
STILL_RUNNING = "Your fine-tune is still running: wait for it to finish, or cancel it, before starting another."


def _shown(name) -> str:
    """A requested name as an error repeats it: short, whatever was sent."""
    text = str(name)
    return repr(text if len(text) <= 64 else text[:60] + "…")


def unknown_dataset(name) -> ValueError:
    return ValueError(f"Unknown dataset {_shown(name)}: pick one from the list, or upload "
                      "interactions.csv and items.csv in the side panel.")


def label(key: str) -> str:
    """How the page names a dataset key: the domain's label, or the name the user gave."""
    return DOMAINS.get(key, display_name(key))


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
    """Shared state of the app. ``recommender_factory(key, folder|None)`` and ``service`` may be
    injected (tests use fakes); by default they come from recdemo.pipeline / recdemo.llm.service.
    Methods that take a dataset ``name`` take the browser ``session`` too: without one (the API)
    only the built-in datasets (and ``demo --data-dir``'s) exist."""

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
        self._local: tuple[str, str] | None = None  # `demo --data-dir FOLDER`: (name, folder), the default
        if cfg.data.data_dir:
            folder = Path(cfg.data.data_dir).expanduser().resolve()
            self._local = (folder.name, str(folder))
        if upload_root:
            Path(upload_root).mkdir(parents=True, exist_ok=True)
        self._upload_root = Path(upload_root) if upload_root else cleanup.new_upload_root()
        self.uploads = SessionStore(self._upload_root)
        limits = cfg.limits
        self.jobs = FineTuneQueue(self._run_job, friendly_error, workers=limits.max_finetune_jobs,
                                  max_waiting=limits.max_queued_jobs,
                                  max_seconds=limits.max_finetune_minutes * 60)
        self.model_ready = threading.Event()
        self.warm_done = threading.Event()  # the throw-away first request has finished (benchmarks wait)
        self.started = time.time()
        self._warm: dict = {"state": "idle", "message": "", "seconds": None}
        self._prep: dict[str, dict] = {}  # dataset key -> {"state": preparing|ready|error, "message", ...}
        self._warm_thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._cleaner: threading.Thread | None = None

    def recommend_concurrency(self) -> dict:
        """Gradio event options shared by every Recommend event and API: one queue ("recommend"),
        ``app.concurrent_requests`` running at once. Their model work is batched across them
        (llm/coalesce.py), so running them together is what lets a room share the model."""
        return dict(concurrency_limit=max(1, int(self.cfg.app.concurrent_requests)), concurrency_id="recommend")

    # -- shared objects --
    @property
    def service(self):
        with self._lock:
            if self._service is None:
                self._service = LLMService(self.cfg.llm)
            return self._service

    def default_dataset(self) -> str:
        if self._local:
            return self._local[0]
        return self.cfg.data.dataset if self.cfg.data.dataset in BUILTIN_FOLDERS else "movielens-small"

    def dataset_key(self, name, session: str | None = None) -> str:
        """The key a dataset is kept under: a built-in's (or --data-dir's) name, or ``session``'s
        own upload; anything else (another session's upload too) is an unknown dataset."""
        if isinstance(name, str) and (name in BUILTIN_FOLDERS or (self._local and name == self._local[0])):
            return name
        key = self.uploads.key(name, session)
        if key is None:
            raise unknown_dataset(name)
        return key

    def datasets(self, session: str | None = None) -> list[tuple[str, str]]:
        """(label, name) for the dataset selectors: the two domains, the configured one, and
        ``session``'s uploads (a browser session sees its own uploads, not other visitors')."""
        names = list(DOMAINS)
        if self.default_dataset() not in names:
            names.append(self.default_dataset())
        out = [(DOMAINS.get(n, n), n) for n in names]
        return out + [(f"Uploaded · {n}", n) for n in self.uploads.names(session)]

    def recommender(self, name: str, session: str | None = None):
        """The Recommender for a dataset, built once (callers for the same dataset wait for it)."""
        return self._recommender(self.dataset_key(name, session))

    def _recommender(self, key: str):
        with self._lock:
            if key in self._recs:
                return self._recs[key]
            if "@" in key and key not in self.uploads.folders:  # the session ended meanwhile
                raise unknown_dataset(display_name(key))
            lock = self._rec_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._recs:
                    return self._recs[key]
            rec = self._build(key)
            with self._lock:
                self._recs[key] = rec
            return rec

    def is_loaded(self, name: str, session: str | None = None) -> bool:
        try:
            key = self.dataset_key(name, session)
        except ValueError:
            return False
        with self._lock:
            return key in self._recs

    def _folder(self, key: str) -> str | None:
        if self._local and key == self._local[0]:
            return self._local[1]
        return self.uploads.folders.get(key)

    def _build(self, key: str):
        folder = self._folder(key)
        if self._factory is not None:
            return self._factory(key, folder)
        return Recommender.from_config(self.cfg, dataset_name=display_name(key), data_dir=folder,
                                       service=self.service)

    # -- adapters --
    def adapters(self, session: str | None = None) -> list[str]:
        """Adapters a session can choose: everyone's (listing them does not load the model) and its own."""
        everyone = {a for a in self.service.available_adapters() if "@" not in a}  # never a session's key
        return sorted(everyone | set(self.uploads.adapters(session)))

    def adapter_arg(self, adapter, session: str | None = None):
        """What a request's ``adapter`` means to the service: 'auto'/'none'/None as they are, the
        session's own adapter by its key, any other name as it is; a path is refused at once."""
        if adapter is None or (isinstance(adapter, str) and adapter.strip().lower() in ("", "auto", "none", "base")):
            return adapter
        own = self.uploads.adapter_key(adapter, session)
        if own is not None:
            if hasattr(self.service, "adapters"):  # registered by its fine-tune; again after a reload
                with self.service.lock:
                    if own not in self.service.adapters.loaded:
                        self.service.register_adapter(self.uploads.adapter_folder(adapter, session))
            return own
        return check_adapter_name(adapter)

    # -- preparing a dataset (search index, SASRec) and the model, in the background --
    def prepare(self, name: str, session: str | None = None) -> dict:
        """Start building a dataset's search index and retriever in a background thread (once);
        returns its state. Events check ``preparing(name)`` instead of blocking for minutes."""
        return self._prepare_key(self.dataset_key(name, session))

    def _prepare_key(self, key: str) -> dict:
        with self._lock:
            state = self._prep.get(key)
            if state is not None and state["state"] != "error":
                return _public(state)
            state = {"state": "preparing", "message": f"Loading {label(key)}…", "started": time.time(),
                     "seconds": None, "progress": None, "cancel": threading.Event()}
            self._prep[key] = state
        threading.Thread(target=self._prepare, args=(key, state), name=f"prepare-{label(key)}",
                         daemon=True).start()
        return _public(state)

    def _prepare(self, key: str, state: dict) -> None:
        try:
            rec = self._recommender(key)
            state["message"] = f"Building the search index for {label(key)}…"
            getattr(rec, "text_index", None)  # lazy property: built (or read from cache) here
            problem = self._checkpoint_problem(rec)
            state["message"] = (f"Training SASRec for {label(key)} ({problem}); `python -m recdemo train` "
                                "does this ahead of time…" if problem else "Loading the SASRec retriever…")
            stack = getattr(rec, "stack", None)
            if stack is not None and hasattr(stack, "build_retriever"):
                def on_epoch(epoch, total, record=None):
                    state.update(progress=epoch / max(total, 1),
                                 message=f"Training SASRec for {label(key)}: epoch {epoch}/{total}…")
                stack.build_retriever(cancel=state["cancel"], on_epoch=on_epoch)
            else:
                getattr(rec, "retriever", None)
            state.update(state="ready", message="Ready", seconds=time.time() - state["started"], progress=1.0)
        except TrainingCancelled:
            state.update(state="error", message=f"Preparing {label(key)} was cancelled.",
                         seconds=time.time() - state["started"])
        except Exception as e:  # noqa: BLE001 - shown in the page
            state.update(state="error", message=friendly_error(e), seconds=time.time() - state["started"])

    def _checkpoint_problem(self, rec) -> str | None:
        dataset = getattr(rec, "dataset", None)
        if not hasattr(dataset, "content_hash"):
            return None
        try:
            return checkpoint_problem(dataset, *locate(dataset, self.cfg.retrieval))
        except Exception:  # noqa: BLE001 - only used for the message
            return None

    def ensure_ready(self, name: str, wait: float = 2.0, session: str | None = None) -> str | None:
        """Start preparing a dataset if needed and wait up to ``wait`` seconds. Returns a sentence
        while it is still being prepared, None when ready; raises ValueError if it failed."""
        key = self.dataset_key(name, session)
        self._prepare_key(key)
        deadline = time.time() + wait
        while True:
            state = self._prep_state(key) or {}
            if state.get("state") == "error":
                raise ValueError(state["message"])
            if state.get("state") == "ready":
                return None
            if time.time() >= deadline:
                return self._preparing(key)
            time.sleep(0.05)

    def preparing(self, name: str, session: str | None = None) -> str | None:
        """A sentence while a dataset is still being prepared, else None."""
        try:
            return self._preparing(self.dataset_key(name, session))
        except ValueError:
            return None

    def _preparing(self, key: str) -> str | None:
        with self._lock:
            state = self._prep.get(key)
        if state is None or state["state"] != "preparing":
            return None
        return (f"{label(key)} is still being prepared ({time.time() - state['started']:.0f} s): "
                f"{state['message']} Please try again in a moment.")

    def prep_state(self, name: str, session: str | None = None) -> dict | None:
        try:
            return self._prep_state(self.dataset_key(name, session))
        except ValueError:
            return None

    def _prep_state(self, key: str) -> dict | None:
        with self._lock:
            state = self._prep.get(key)
            return _public(state) if state else None

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

    def status(self, dataset: str | None = None, session: str | None = None) -> dict:
        """The model's state, and ``dataset``'s preparation when it is not ready yet."""
        out = {**self._warm, "uptime_s": round(time.time() - self.started, 1),
               "model_ready": self.model_ready.is_set(), "warmed_up": self.warm_done.is_set(),
               "finetune_running": self.jobs.running()}
        prep = self.prep_state(dataset, session) if dataset else None
        if prep and prep["state"] != "ready" and out["state"] != "loading":
            out.update(state="loading" if prep["state"] == "preparing" else "error", message=prep["message"])
            if prep.get("progress") is not None:
                out["progress"] = prep["progress"]
        return out

    def wait_ready(self, timeout: float) -> bool:
        if self._warm_thread is None:
            return True
        return self.model_ready.wait(timeout)

    # -- uploads --
    def add_upload(self, interactions_path: str, items_path: str, name: str, session: str | None = None) -> dict:
        """Validate an uploaded pair of files and register them as ``session``'s dataset ``name``."""
        if not session:
            raise ValueError("Uploads need a browser session: open the app's page to upload data.")
        name = check_name(name, "Dataset")
        limits = self.cfg.limits
        if name in BUILTIN_FOLDERS or (self._local and name == self._local[0]):
            raise ValueError(f"{name!r} is the name of a built-in dataset; choose another name.")
        mine = self.uploads.names(session)
        if name in mine:
            raise ValueError(f"You already uploaded a dataset named {name!r}; choose another name.")
        if len(mine) >= limits.max_uploads_per_session:
            raise ValueError(f"A session may keep {limits.max_uploads_per_session} uploaded datasets on this "
                             "server (limits.max_uploads_per_session); reload the page to start over.")
        if session_digest(session) not in self.uploads.sessions() and \
                len(self.uploads.sessions()) >= limits.max_sessions_uploading:
            raise ValueError("The server holds as many uploads as it can right now; please try again later.")
        try:
            folder, summary = save_upload(self.uploads.folder_for(session), interactions_path, items_path, name,
                                          limits.max_upload_mb, limits.max_field_chars, limits.max_upload_rows)
        except FileExistsError:  # the same name twice at once, or a removed upload's folder still in use
            raise ValueError(f"You already uploaded a dataset named {name!r}; choose another name.") from None
        self.uploads.add(session, name, folder)
        return summary

    def end_session(self, session: str | None) -> None:
        """A browser session closed: its uploads go (their SASRec training and fine-tunes are
        cancelled), and so does its folder once no job of it runs any more."""
        if not session:
            return
        digest = session_digest(session)
        # Cancel first, then drop the data: a job that finds its dataset gone has already been told
        # to stop, so it ends as cancelled, never as failed.
        for snap in self.jobs.active():
            if snap["params"].get("session") == digest and "@" in str(snap["params"].get("key", "")):
                self.jobs.cancel(snap["id"])
        for key, folder in self.uploads.end(session).items():
            self._drop(key, folder)
        if self._service is not None and hasattr(self._service, "unload_adapter"):
            for name in self.uploads.adapters(session):  # their LoRA weights leave the shared model
                self._service.unload_adapter(private_key(name, session))
        if not self._busy_sessions() & {digest}:
            self.uploads.remove(self.uploads.folder_for(session))

    def _drop(self, key: str, folder: str | None) -> None:
        """Forget everything built for an upload (its preparation is cancelled)."""
        with self._lock:
            state = self._prep.pop(key, None)
            self._recs.pop(key, None)
            self._rec_locks.pop(key, None)
        if state is not None:
            state["cancel"].set()
        if folder:
            forget_dataset(folder)

    def _busy_sessions(self) -> set[str]:
        return {s["params"].get("session") for s in self.jobs.active() if s["params"].get("session")}

    # -- cleanup, at start and on a timer --
    def clean(self, now: float | None = None) -> dict:
        """One cleanup pass (see app/cleanup.py); returns what it removed, for the log and tests."""
        app, now = self.cfg.app, time.time() if now is None else now
        stale = app.stale_hours * 3600
        out = {"work": [], "uploads": [], "gradio_files": 0}
        for folder in (self.cfg.llm.adapter_dir, self.cfg.retrieval.cache_dir, self.cfg.retrieval.text_cache_dir,
                       self.cfg.llm.fusion_cache_dir):
            out["work"] += cleanup.clean_work_dir(folder, stale, now)
        for key, folder in self.uploads.expired(app.upload_hours * 3600, now).items():
            self._drop(key, folder)
        for folder in self.uploads.orphan_folders(self._busy_sessions(), now=now):
            self.uploads.remove(folder)
            out["uploads"].append(folder)
        out["uploads"] += cleanup.clean_orphan_upload_roots(self._upload_root.parent, keep=self._upload_root,
                                                            max_age_s=app.upload_hours * 3600, now=now)
        gradio_cache = app.gradio_cache_dir or cleanup.gradio_cache_dir()
        out["gradio_files"] = cleanup.clean_old_files(gradio_cache, app.gradio_cache_hours * 3600, now)
        if out["work"] or out["uploads"] or out["gradio_files"]:
            log.info("cleanup: removed %d temp/partial folders, %d upload folders, %d cached files",
                     len(out["work"]), len(out["uploads"]), out["gradio_files"])
        return out

    def start_cleanup(self) -> None:
        """Clean now, then every ``cfg.app.cleanup_minutes`` on a daemon thread until ``close``."""
        if self._cleaner is not None:
            return

        def loop() -> None:
            while True:
                try:
                    self.clean()
                except Exception:  # noqa: BLE001 - a failed pass must not stop the next one
                    log.warning("cleanup failed", exc_info=True)
                if self._closing.wait(self.cfg.app.cleanup_minutes * 60):
                    return

        self._cleaner = threading.Thread(target=loop, name="cleanup", daemon=True)
        self._cleaner.start()

    # -- fine-tuning (runs on the queue's worker threads) --
    def finetune_spec(self, params: dict, out: str | Path | None = None) -> FineTuneSpec:
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
                  "out": str(out or Path(self.cfg.llm.adapter_dir) / name), "resume": False}
        return FineTuneSpec(**{**defaults, **wanted})

    def _run_job(self, job: Job, progress, cancel: threading.Event) -> dict:
        p, spec = job.params, job.params["spec"]
        progress({"step": 0, "total": spec.steps, "phase": "preparing the dataset and retrieval model"})
        rec = self._recommender(p["key"])
        dataset = getattr(rec, "dataset", None)
        retriever = getattr(rec, "retriever", None)
        if self._finetune_runner is not None:
            return self._finetune_runner(spec, dataset, retriever, progress, cancel)
        self.model_ready.wait(600)  # share the base model with the app, never load a second copy
        result = run_finetune(spec, dataset, self.service, retriever, progress=progress, cancel=cancel)
        if result.get("status") == "done":
            try:
                if Path(spec.out).name not in self.service.adapters.loaded:
                    self.service.register_adapter(result.get("path", spec.out))
            except Exception:  # noqa: BLE001 - run_finetune registers it; this is a safety net
                log.warning("could not register the new adapter", exc_info=True)
        return result

    def submit_finetune(self, params: dict, session: str | None = None) -> Job:
        """Queue a fine-tune; ValueError with a sentence when the request cannot run. One runs per
        session at a time; on a session's own upload, the adapter is the session's own too."""
        name = check_name(params.get("adapter"), "Adapter")
        key = self.dataset_key(params.get("dataset"), session)
        digest = session_digest(session) if session else None
        if digest and digest in self._busy_sessions():
            raise ValueError(STILL_RUNNING)
        private = "@" in key
        out = self.uploads.adapter_folder(name, session) if private else None
        spec = self.finetune_spec(params, out)
        if name in self.adapters(session):
            raise ValueError(f"An adapter named {name!r} already exists; choose another name so the "
                             "existing one keeps working.")
        writes = str(Path(spec.out))
        if any(str(s["params"]["spec"].out) == writes for s in self.jobs.active()):
            raise ValueError(f"A fine-tune that writes {name!r} is already queued.")
        return self.jobs.submit({"dataset": display_name(key), "key": key, "session": digest, "adapter": name,
                                 "tasks": spec.tasks, "steps": spec.steps, "lora_r": spec.lora_r, "lr": spec.lr,
                                 "eval_users": spec.eval_users, "spec": spec})

    def job_running(self, job_id: str | None) -> bool:
        """Whether ``job_id`` is still queued or running (a session runs one fine-tune at a time)."""
        snap = self.jobs.snapshot(job_id) if job_id else None
        return snap is not None and snap["status"] not in FINISHED

    def close(self, timeout: float = 120.0) -> None:
        self._closing.set()
        with self._lock:
            states = list(self._prep.values())
        for state in states:
            state["cancel"].set()  # a SASRec training for an upload stops at its next step
        self.jobs.shutdown()
        if isinstance(self._warm_thread, threading.Thread):  # torch threads must not outlive Python
            self._warm_thread.join(timeout)
        shutil.rmtree(self._upload_root, ignore_errors=True)


def _public(state: dict) -> dict:
    """A copy of a preparation state without its cancel event."""
    return {k: v for k, v in state.items() if k != "cancel"}


def _whole(value, what: str) -> int:
    """A whole number from a form field (Gradio's Number gives floats, or None when cleared)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: enter a whole number.") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{what}: enter a whole number.")
    return int(number)
