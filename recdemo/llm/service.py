"""One base LLM shared by every dataset's Recommender and by fine-tuning.

The model is loaded lazily on first use. Adapters are switched in place (see adapters.py), so
every forward/generate must run inside ``use_adapter(...)`` (or ``base_model()``), which holds
``lock`` for its duration: the app serves several users while a fine-tune runs, and the active
adapter is global state of the one model.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from recdemo.llm.coalesce import Coalescer
from recdemo.llm.adapters import AdapterManager, check_adapter_name, finetune_hint, is_adapter_dir
from recdemo.llm.decode import Decoder
from recdemo.llm.models import LLM, load_llm
from recdemo.errors import ModelNotFound

NO_ADAPTER = {None, "", "none", "base"}


class LLMService:
    def __init__(self, cfg, llm: LLM | None = None):
        """``cfg`` is an LLMConfig; ``llm`` an already loaded model (tests, notebooks)."""
        self.cfg = cfg
        self.lock = threading.RLock()
        self._llm = llm
        self._adapters: AdapterManager | None = None
        # concurrent generate calls with the same settings: one batched call (see generate)
        self.generations = Coalescer(self._generate_merged, max_rows=cfg.coalesce_rows, gate=self.lock)
        self.decoder = Decoder.from_config(cfg)  # every generation; holds the prefix-KV cache

    # -- lazy parts --
    @property
    def llm(self) -> LLM:
        if self._llm is None:
            with self.lock:
                if self._llm is None:
                    self._llm = load_llm(self.cfg)
        return self._llm

    @property
    def adapters(self) -> AdapterManager:
        if self._adapters is None:
            with self.lock:
                if self._adapters is None:
                    self._adapters = AdapterManager(self.llm, self.cfg.adapter_dir)
        return self._adapters

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def describe(self) -> str:
        return self.llm.describe()

    # -- adapters --
    def available_adapters(self) -> list[str]:
        """Adapter names that can be activated (listing them does not load the model)."""
        if self._adapters is not None:
            return self.adapters.available()
        folder = Path(self.cfg.adapter_dir)
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and is_adapter_dir(p)) if folder.is_dir() else []

    def register_adapter(self, path: str | Path) -> str:
        """Load (or reload, after a new fine-tune) an adapter folder this program wrote, without
        reloading the base (requests then name it by the folder's name)."""
        with self.lock:
            name = self.adapters.register(path)
            self.decoder.forget_adapters(self.adapters.loaded.values())  # a re-trained adapter's old KV
            return name

    def unload_adapter(self, name: str) -> bool:
        """Free a loaded adapter's memory (e.g. a closed session's); False when it was not loaded."""
        if self._adapters is None:
            return False
        with self.lock:
            gone = self.adapters.unload(name)
            self.decoder.forget_adapters(self.adapters.loaded.values())
            return gone

    def resolve_adapter(self, requested: str | None, dataset_name: str | None = None,
                        ranker: str | None = None) -> str | None:
        """'auto' -> the dataset's shipped adapter: ``<dataset>-<ranker>`` (trained on that ranker's
        prompt) if present, else ``<dataset>``, else None; 'none' -> None; anything else must be the
        name of a registered adapter or of a folder under the adapter folder, never a path
        (else ModelNotFound: one sentence, saying how to create it, with no path of this machine)."""
        if isinstance(requested, str) and requested.strip().lower() in NO_ADAPTER:
            return None
        if requested is None:
            return None
        if requested == "auto":
            if not dataset_name:
                return None
            shipped = self.available_adapters()
            names = ([f"{dataset_name}-{ranker}"] if ranker else []) + [dataset_name]
            return next((n for n in names if n in shipped), None)
        if self._adapters is not None and requested in self._adapters.loaded:
            return requested
        check_adapter_name(requested)  # before the model is loaded or the disk is looked at
        with self.lock:
            try:
                return self.adapters.load(requested)
            except ModelNotFound:
                raise
            except OSError as e:
                raise ModelNotFound(f"adapter {requested!r} could not be read ({type(e).__name__}); "
                                    + finetune_hint(requested)) from e

    @contextmanager
    def use_adapter(self, name: str | None):
        """Hold the lock and run with adapter ``name`` (None: bare base model); restores the previous one."""
        with self.lock:
            manager = self.adapters if (name is not None or self._adapters is not None) else None
            previous = manager.active if manager else None
            if manager is not None:
                manager.activate(name)
            try:
                yield self.llm
            finally:
                if manager is not None and manager.active != previous:
                    manager.activate(previous)

    def base_model(self):
        """Context: the base model with every adapter disabled (profiles, explanations)."""
        return self.use_adapter(None)

    # -- generation --
    def generate(self, prompts: list[str], max_new_tokens: int = 32, stop_strings: list[str] | None = None,
                 adapter: str | None = None, stop_when: Callable[[str], bool] | None = None,
                 **gen_kwargs) -> list[str]:
        """Greedy continuation of each prompt in one batched call (llm/decode.py: shared and cached prompt
        prefixes are computed once). Returns only the new text.

        ``stop_strings`` end a sequence early (each sequence stops on its own); the returned text is cut
        before the first stop string. ``stop_when(new_text)`` is a predicate checked after every token
        (pass a module-level function: calls merge only when their settings compare equal).

        Concurrent calls with equal settings (adapter, max_new_tokens, stop strings, stop_when) that wait while the model is busy run as one batched call of at most
        ``cfg.coalesce_rows`` prompts; each caller gets its own texts back.
        """
        if not prompts:
            return []
        if gen_kwargs:
            raise TypeError(f"greedy decoding takes no other options: {', '.join(sorted(gen_kwargs))}")
        prompts = list(prompts)
        key = _settings_key(adapter, max_new_tokens, stop_strings, stop_when)
        if key is None:  # settings that cannot be compared (an unhashable predicate): run alone
            return self._generate_batch(prompts, max_new_tokens, stop_strings, adapter, stop_when)
        return self.generations.submit(key, prompts, rows=len(prompts))

    def _generate_merged(self, key, jobs: list[list[str]]) -> list[list[str]]:
        """The coalescer's batch: every job's prompts in one call, the texts split back per job."""
        adapter, max_new_tokens, stops, stop_when = key
        texts = self._generate_batch([p for job in jobs for p in job], max_new_tokens,
                                     list(stops) if stops is not None else None, adapter, stop_when)
        out, at = [], 0
        for job in jobs:
            out.append(texts[at:at + len(job)])
            at += len(job)
        return out

    def _generate_batch(self, prompts: list[str], max_new_tokens: int = 32, stop_strings: list[str] | None = None,
                        adapter: str | None = None, stop_when: Callable[[str], bool] | None = None) -> list[str]:
        """``generate``'s one decoder call for ``prompts``. Holds the lock (via ``use_adapter``). Each prompt
        is tokenized alone (no padding: the decoder lays rows out itself)."""
        with self.use_adapter(adapter) as llm:
            tok = llm.tokenizer
            rows = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
            new = self.decoder.generate(llm, rows, max_new_tokens, stop_strings=stop_strings, stop_when=stop_when)
        texts = tok.batch_decode(new, skip_special_tokens=True)
        if stop_strings:
            texts = [_cut(t, stop_strings) for t in texts]
        return texts


def _settings_key(adapter, max_new_tokens, stop_strings, stop_when) -> tuple | None:
    """What must be equal for two generate calls to share one batch; None when it is not hashable."""
    key = (adapter, int(max_new_tokens), tuple(stop_strings) if stop_strings else None, stop_when)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _cut(text: str, stops: list[str]) -> str:
    ends = [text.find(s) for s in stops if s and text.find(s) >= 0]
    return text[:min(ends)] if ends else text
