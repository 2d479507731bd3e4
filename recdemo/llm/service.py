"""One base LLM shared by every dataset's Recommender and by fine-tuning.

The model is loaded lazily on first use. Adapters are switched in place (see adapters.py), so
every forward/generate must run inside ``use_adapter(...)`` (or ``base_model()``), which holds
``lock`` for its duration: the app serves several users while a fine-tune runs, and the active
adapter is global state of the one model.
"""
from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from recdemo.llm.coalesce import Coalescer, ModelThread
from recdemo.llm.adapters import AdapterManager, check_adapter_name, finetune_hint, is_adapter_dir
from recdemo.llm.decode import Decoder, RowStop
from recdemo.llm.models import LLM, load_llm
from recdemo.llm.packed_linear import pack_linears
from recdemo.errors import ModelNotFound

NO_ADAPTER = {None, "", "none", "base"}


class LLMService:
    def __init__(self, cfg, llm: LLM | None = None):
        """``cfg`` is an LLMConfig; ``llm`` an already loaded model (tests, notebooks)."""
        self.cfg = cfg
        self.lock = threading.RLock()
        self._llm = llm
        self._adapters: AdapterManager | None = None
        # concurrent generate calls with the same adapter: one batched decoder call (see run)
        self.model_thread = ModelThread()  # every coalesced batch on this model runs on it
        self.generations = self.coalescer(self._generate_merged, cfg.coalesce_rows)
        self.decoder = Decoder.from_config(cfg)  # every generation; holds the prefix-KV cache

    def coalescer(self, run, max_rows: int) -> Coalescer:
        """Concurrent callers' jobs run as one batch (``coalesce.Coalescer``) under this model's lock,
        on its model thread: every batched caller of the model (generations, profiles, reranks) uses one."""
        return Coalescer(run, max_rows=max_rows, gate=self.lock, thread=self.model_thread,
                         gather_s=self.cfg.coalesce_gather_ms / 1000,
                         gather_max_s=self.cfg.coalesce_gather_max_ms / 1000)

    def expect_run(self, adapter: str | None = None):
        """A ticket (``coalesce.Ticket``) for a ``run``/``stream`` with ``adapter`` that this caller will
        make soon: a concurrent call of that adapter waits for it (briefly) to share its batch."""
        return self.generations.expect(adapter)

    # -- lazy parts --
    @property
    def llm(self) -> LLM:
        if self._llm is None:
            with self.lock:
                if self._llm is None:
                    llm = load_llm(self.cfg)
                    pack_linears(llm.model, self.cfg.cpu_packed_rows, self.cfg.cpu_packed_max_mb)
                    self._llm = llm
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
    def generation(self, prompts: list[str], max_new_tokens: int = 32, stop_strings: list[str] | None = None,
                   stop_when: Callable[[str], bool] | None = None) -> "Generation":
        """A ``Generation`` of text prompts (each tokenized alone: the decoder lays rows out itself)."""
        tok = self.llm.tokenizer
        return Generation([list(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts], max_new_tokens,
                          tuple(stop_strings) if stop_strings else None, stop_when)

    def generate(self, prompts: list[str], max_new_tokens: int = 32, stop_strings: list[str] | None = None,
                 adapter: str | None = None, stop_when: Callable[[str], bool] | None = None,
                 **gen_kwargs) -> list[str]:
        """Greedy continuation of each prompt in one batched call (llm/decode.py: shared and cached prompt
        prefixes are computed once). Returns only the new text.

        ``stop_strings`` end a sequence early (each sequence stops on its own); the returned text is cut
        before the first stop string. ``stop_when(new_text)`` is a predicate checked after every token.
        Concurrent calls (``generate`` or ``run``) with the same adapter share one batched decoder call
        (``run``): each row keeps its own stops, each caller gets its own texts back.
        """
        if not prompts:
            return []
        if gen_kwargs:
            raise TypeError(f"greedy decoding takes no other options: {', '.join(sorted(gen_kwargs))}")
        return self.run([self.generation(list(prompts), max_new_tokens, stop_strings, stop_when)], adapter)[0]

    def run(self, generations: list["Generation"], adapter: str | None = None,
            on_row: Callable[[int, int, str], None] | None = None, ticket=None) -> list[list[str]]:
        """Every row of ``generations`` in ONE decoder call (a pipeline stage submits its profile's keyword
        line with its explanations), shared with concurrent callers of the same adapter that wait while
        the model is busy (``llm/coalesce.py``, at most ``cfg.coalesce_rows`` rows a batch). Returns the
        texts per generation. ``on_row(generation, row, text)`` is called (from the decoding thread) as
        each row finishes; a row may be reported again when a failed batch is retried job by job.
        ``ticket``: this call's, from ``expect_run`` (closed once the call is queued)."""
        generations = list(generations)
        rows = sum(len(g.rows) for g in generations)
        if not rows:
            if ticket is not None:
                ticket.close()
            return [[] for _ in generations]
        return self.generations.submit(adapter, _Job(generations, on_row), rows=rows, ticket=ticket)

    def stream(self, generations: list["Generation"], adapter: str | None = None, ticket=None
               ) -> Iterator[list[tuple[int, int, str]]]:
        """``run`` as it goes: yields each row as it finishes, [(generation, row, text)], one row per
        yield in the order they finished; then ends, or raises the call's error. The call waits in a
        thread of its own, so the caller may yield (a page update) while the model decodes (a caller
        holding ``lock`` gets every row at the end instead, in the order they finished); every row is
        reported once. The model runs on ``model_thread`` either way."""
        if self.lock._is_owned():  # holding the model, a thread would wait for it forever
            done: list = []
            self.run(generations, adapter, on_row=lambda g, i, text: done.append((g, i, text)), ticket=ticket)
            for row in {(g, i): (g, i, t) for g, i, t in done}.values():
                yield [row]
            return
        finished: queue.Queue = queue.Queue()
        end = object()

        def work():
            try:
                texts = self.run(generations, adapter, on_row=lambda g, i, text: finished.put((g, i, text)),
                                 ticket=ticket)
                finished.put((end, texts))
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                finished.put((end, e))

        threading.Thread(target=work, name="llm-stream", daemon=True).start()
        seen: set = set()
        while True:
            # one row per yield, however fast the decoder runs: what the caller sees does not depend
            # on thread timing (draining the queue here made the number of page updates vary)
            got = [finished.get()]
            rows = [r for r in got if r[0] is not end and (r[0], r[1]) not in seen]
            seen.update((g, i) for g, i, _ in rows)
            if rows:
                yield rows
            done = next((r[1] for r in got if r[0] is end), None)
            if done is None:
                continue
            if isinstance(done, BaseException):
                raise done
            rest = [(g, i, text) for g, texts in enumerate(done) for i, text in enumerate(texts) if (g, i) not in seen]
            if rest:  # reported by no callback (cannot happen unless a row was lost): the final texts
                yield rest
            return

    def _generate_merged(self, adapter, jobs: list["_Job"]) -> list[list[list[str]]]:
        """The coalescer's batch: every row of every job in one decoder call, each row with its own
        stops; the texts split back per job and generation, each reported as its row finishes."""
        where = [(job, g, i) for job in jobs for g, gen in enumerate(job.generations) for i in range(len(gen.rows))]
        rows = [job.generations[g].rows[i] for job, g, i in where]
        stops = [job.generations[g].stop for job, g, i in where]
        with self.use_adapter(adapter) as llm:
            tok = llm.tokenizer

            def finished(row: int, new: list[int]) -> None:
                job, g, i = where[row]
                if job.on_row is not None:
                    job.on_row(g, i, _text(tok, new, stops[row].stop_strings))
            new = self.decoder.generate(llm, rows, stops=stops, on_row=finished)
        texts = [_text(tok, n, stop.stop_strings) for n, stop in zip(new, stops)]
        out, at = [], 0
        for job in jobs:
            mine = []
            for gen in job.generations:
                mine.append(texts[at:at + len(gen.rows)])
                at += len(gen.rows)
            out.append(mine)
        return out


@dataclass(eq=False)
class Generation:
    """One caller's prompts (token ids) and when each of its rows stops (``decode.RowStop``)."""
    rows: list[list[int]]
    max_new_tokens: int = 32
    stop_strings: tuple[str, ...] | None = None
    stop_when: Callable[[str], bool] | None = None

    @property
    def stop(self) -> RowStop:
        return RowStop(int(self.max_new_tokens), tuple(self.stop_strings) if self.stop_strings else None,
                       self.stop_when)


@dataclass(eq=False)
class _Job:
    """What one ``run`` submits to the coalescer."""
    generations: list[Generation]
    on_row: Callable[[int, int, str], None] | None = None


def _text(tok, new: list[int], stops) -> str:
    """A row's new text, cut before its first stop string."""
    text = tok.decode(new, skip_special_tokens=True)
    return _cut(text, list(stops)) if stops else text


def _cut(text: str, stops: list[str]) -> str:
    ends = [text.find(s) for s in stops if s and text.find(s) >= 0]
    return text[:min(ends)] if ends else text
