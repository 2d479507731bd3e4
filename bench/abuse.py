"""Fire the attacks of issue 18 at a running app and check that it stays up, answers each with a
clear error in under 2 s, and keeps its memory under 4 GB.

    python bench/abuse.py                        # launches `python app.py` (embedded model) on 127.0.0.1
    python bench/abuse.py --cases 1,5            # only some cases (1-7, see CASES)
    python bench/abuse.py --out bench/results    # also write abuse.json and abuse.md there
    python bench/abuse.py --in-process           # the app in this process (uploads fall back to AppContext)

Every request goes through ``gradio_client`` to 127.0.0.1: the public ``/recommend`` endpoint, and
the page's own events for what has no public endpoint (``/on_upload``, ``/on_start``), as a browser
would send them. A session's uploads exist only for that browser session (the public ``/recommend``
has none and sees built-in datasets only), so case 4 also recommends through the page
(``/on_submit`` fills the session's history, ``/on_recommend`` is the Recommend button). A request is judged by:
- up: the server process is alive and ``/status`` answers afterwards;
- error: the answer is an error (an exception from the API, or an error notice in the page's HTML);
- fast: the answer came in under ``--max-answer-s`` (2 s);
- clear: one line, one sentence, at most 400 characters, no traceback, no server path;
- RSS: the server's peak resident memory during the case (Linux VmHWM, reset before each case)
  stays under ``--max-rss-gb`` (4 GB); above ``--kill-rss-gb`` the bench kills the server to protect
  the machine (and restarts it for the next case) and the case fails.
Some cases check more (which file, line and column an upload error names; that another session's
dataset cannot be told apart from a missing one; the number of fine-tunes a server accepts).
A FAIL is a finding about the app, not about the bench: the criteria are never relaxed to pass.

The app gets its own adapter, checkpoint and SASRec cache folders in a temporary directory (shipped
files are linked, never written) and Gradio's upload cache there too; everything is removed at the end.
"""
from __future__ import annotations

import argparse
import html as htmllib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAX_ANSWER_S = 2.0
MAX_RSS_GB = 4.0
KILL_RSS_GB = 8.0  # the machine is shared: a server this big is killed, and the case fails
MAX_MESSAGE_CHARS = 400
HUGE = 100_000
MOVIES = ["Toy Story (1995)", "Heat (1995)", "Jumanji (1995)"]  # movielens-small titles
ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.~-]+/)*[\w.~-]+")


# ---------------------------------------------------------------------------------------------
# memory of a process (Linux /proc)
def proc_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak(pid: int) -> bool:
    """Restart VmHWM at the current RSS (clear_refs "5"), so each case gets its own peak."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def gb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 2**20, 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# the server under attack
class Server:
    """An app listening on ``url``; ``pid`` is the process whose memory is measured. ``ctx`` is the
    AppContext when the app runs in this process (uploads fall back to it without an endpoint)."""
    mode = "external"

    def __init__(self, url: str, pid: int | None = None, ctx=None):
        self.url, self.pid, self.ctx = url, pid, ctx
        self.restarts = 0
        self.startup: dict = {}

    def alive(self) -> bool:
        return self.pid is None or Path(f"/proc/{self.pid}").exists() and proc_kb(self.pid, "VmRSS") is not None

    def rss_kb(self) -> int | None:
        return proc_kb(self.pid, "VmRSS") if self.pid else None

    def kill(self) -> bool:
        return False  # only a server the bench started may be killed

    def restart(self) -> bool:
        return False

    def stop(self) -> None:
        pass


class InProcessServer(Server):
    """``recdemo.app.main.launch(block=False)`` in this process, with the given AppContext (a fake one
    in the tests, the real one with ``--in-process``). Its memory is this whole process's."""
    mode = "in-process"

    def __init__(self, ctx, warmup: bool = True):
        from recdemo.app.main import launch

        cfg = ctx.cfg.set("app", "port", free_port()).set("app", "host", "127.0.0.1")
        ctx.cfg = cfg
        t0 = time.perf_counter()
        self.demo, ctx, url = launch(cfg, ctx=ctx, block=False, warmup=warmup, quiet=True)
        super().__init__(url, os.getpid(), ctx)
        self.startup = {"server_up_s": round(time.perf_counter() - t0, 2)}

    def stop(self) -> None:
        self.demo.close()
        self.ctx.close(timeout=30)


class SubprocessServer(Server):
    """``python app.py`` with its own folders under ``tmp`` (see app_env); restarted on request."""
    mode = "subprocess"

    def __init__(self, tmp: Path, wait_s: float = 600, warm: bool = True):
        self.tmp, self.wait_s, self.warm = tmp, wait_s, warm
        self.log = tmp / "server.log"
        super().__init__("")
        self.proc: subprocess.Popen | None = None
        self._launch()

    def _launch(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        t0 = time.perf_counter()
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT,
                                         env=app_env(self.tmp, port), stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=die_with_parent)
        self.pid = self.proc.pid
        self.startup = wait_ready(self.url, self.proc, t0, self.wait_s, self.warm)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> bool:
        if self.alive():
            self.proc.kill()
            self.proc.wait(30)
        return True

    def restart(self) -> bool:
        self.kill()
        self.restarts += 1
        self._launch()
        return self.alive()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tracebacks(self) -> int:
        """Tracebacks in the server's log (issue 18 wants a user's error logged as one line)."""
        try:
            return self.log.read_text(errors="replace").count("Traceback (most recent call last)")
        except OSError:
            return 0

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def die_with_parent() -> None:
    """In the child: SIGTERM when the bench dies, even by SIGKILL (no server is left behind)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def app_env(tmp: Path, port: int) -> dict:
    """The app's environment: 127.0.0.1 only, no analytics, and folders of its own under ``tmp``
    (the shipped adapters and SASRec checkpoints are linked so 'auto' still finds them)."""
    from recdemo.config import Config

    cfg = Config.from_env()
    adapters, checkpoints = tmp / "adapters", tmp / "checkpoints"
    for folder, pattern, shipped in ((adapters, "*", cfg.llm.adapter_dir),
                                     (checkpoints, "sasrec-*", cfg.retrieval.checkpoint_dir)):
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(Path(shipped).glob(pattern)):
            if not (folder / f.name).exists():
                (folder / f.name).symlink_to(f.resolve())
    (tmp / "gradio").mkdir(exist_ok=True)
    return {**os.environ, "GRADIO_SERVER_PORT": str(port), "RECDEMO_HOST": "127.0.0.1",
            "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_TEMP_DIR": str(tmp / "gradio"), "RECDEMO_ADAPTER_DIR": str(adapters),
            "RECDEMO_CHECKPOINT_DIR": str(checkpoints), "RECDEMO_SASREC_CACHE": str(tmp / "sasrec-cache"),
            "RECDEMO_RANKER": "score", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def wait_ready(url: str, proc, t0: float, wait_s: float, warm: bool = True) -> dict:
    """Wait for the page, the model and (``warm``) the app's own warm-up request, so that ours do not
    compete with it for the CPUs."""
    from gradio_client import Client

    deadline = t0 + wait_s
    while time.perf_counter() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        raise RuntimeError(f"the app did not start (exit code {proc.poll()})")
    out = {"server_up_s": round(time.perf_counter() - t0, 2)}
    client = Client(url, verbose=False)
    while time.perf_counter() < deadline:
        st = client.predict(api_name="/status")
        if st.get("state") == "error":
            raise RuntimeError(f"the app failed to load: {st.get('message')}")
        if st.get("warmed_up") or (not warm and st.get("state") == "ready"):
            break
        time.sleep(0.5)
    out["warm_request_done_s" if warm else "model_ready_s"] = round(time.perf_counter() - t0, 2)
    return out


class Watchdog:
    """Samples the server's RSS; kills a server the bench started once it passes ``kill_kb``."""

    def __init__(self, server: Server, kill_kb: int, every_s: float = 0.2):
        self.server, self.kill_kb, self.every_s = server, kill_kb, every_s
        self.max_kb, self.killed = 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="abuse-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            kb = self.server.rss_kb() or 0
            self.max_kb = max(self.max_kb, kb)
            if kb > self.kill_kb and self.server.kill():
                self.killed = True

    def reset(self) -> None:
        self.max_kb, self.killed = self.server.rss_kb() or 0, False
        if self.server.pid:
            reset_peak(self.server.pid)

    def peak_kb(self) -> int:
        hwm = proc_kb(self.server.pid, "VmHWM") if self.server.pid else None
        return max(self.max_kb, hwm or 0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


# ---------------------------------------------------------------------------------------------
# answers
@dataclass
class Answer:
    kind: str  # ok | error | info | unchanged | timeout | died | skipped
    message: str = ""
    seconds: float = 0.0
    via: str = ""
    data: object = None


def html_text(value) -> str:
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", str(value or ""))).strip()


def classify_html(value) -> tuple[str, str]:
    """A page event's HTML output: an error notice, an info notice, no change at all (gr.skip(): a
    refusal shown only as a toast, which API clients never see), or anything else ('ok')."""
    if isinstance(value, dict) and value.get("__type__") == "update" and "value" not in value.get("props", value):
        return "unchanged", ""
    text = re.sub(r"\s+", " ", html_text(value))
    m = re.search(r'class="[^"]*\b(rd-notice|notice)\b[^"]*\b(error|info|warning)\b', str(value or ""))
    if m:
        return ("error" if m.group(2) == "error" else "info"), text
    return "ok", text


def first_html(result) -> str:
    return result[0] if isinstance(result, (list, tuple)) and result else result


def call(client, api_name: str, *args, timeout: float, alive=lambda: True, html: bool = False) -> Answer:
    """One request; an exception from the app is an error answer, the HTML of a page event is read."""
    from gradio_client.exceptions import AppError

    t0 = time.perf_counter()
    try:
        result = client.submit(*args, api_name=api_name).result(timeout=timeout)
    except AppError as e:
        return Answer("error", str(getattr(e, "message", None) or e), time.perf_counter() - t0, api_name)
    except TimeoutError:
        return Answer("timeout", f"no answer in {timeout:g} s", time.perf_counter() - t0, api_name)
    except Exception as e:  # noqa: BLE001 - a dropped connection: did the server die?
        kind = "error" if alive() else "died"
        return Answer(kind, f"{type(e).__name__}: {e}"[:500], time.perf_counter() - t0, api_name)
    dt = time.perf_counter() - t0
    if html:
        kind, text = classify_html(first_html(result))
        return Answer(kind, text, dt, api_name, result)
    return Answer("ok", "", dt, api_name, result)


# ---------------------------------------------------------------------------------------------
# judging
def message_problems(msg: str) -> list[str]:
    """Why a message is not one clear sentence for a user (empty: it is)."""
    msg = (msg or "").strip()
    out = []
    if not msg:
        return ["empty message"]
    if len(msg) > MAX_MESSAGE_CHARS:
        out.append(f"{len(msg):,} characters (over {MAX_MESSAGE_CHARS})")
    if "\n" in msg:
        out.append("several lines")
    if "Traceback" in msg or re.search(r'File "[^"]+", line \d+', msg):
        out.append("a traceback")
    if re.match(r"(Something went wrong|[A-Z]\w*(Error|Exception)\b)", msg):
        out.append("an internal error, not a message")
    sentences = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'“(])", msg[:MAX_MESSAGE_CHARS * 4]) if s.strip()]
    if len(sentences) > 1:
        out.append(f"{len(sentences)} sentences")
    return out


def path_leaks(msg: str, sent: str = "", server_paths=()) -> list[str]:
    """Server paths in a message: a known folder of the server, or an absolute path the client did
    not send itself."""
    leaks = [p for p in server_paths if p and len(p) > 1 and p in msg]
    for m in ABS_PATH.findall(msg or ""):
        if m != sent and not (sent and sent.startswith(m)) and not any(m in p for p in leaks):
            leaks.append(m)
    return leaks


def normalized(msg: str, *names: str) -> str:
    for n in names:
        if n:
            msg = msg.replace(n, "<NAME>")
    return msg


@dataclass
class Row:
    id: str
    case: str
    request: str
    via: str = ""
    answer: str = ""
    message: str = ""
    seconds: float | None = None
    up: bool = True
    rss_peak_gb: float | None = None
    problems: list[str] = field(default_factory=list)
    notes: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "result": "PASS" if self.ok else "FAIL"}


def judge(row: Row, a: Answer, want: str = "error", max_s: float = MAX_ANSWER_S, sent: str = "",
          server_paths=()) -> Row:
    """Fill ``row`` from the answer: it must be ``want`` ("error"; "ok": a result; "any": a result
    or a clear error), under ``max_s``; a message must be one clear sentence without server paths."""
    row.via, row.answer, row.seconds = a.via, a.kind, round(a.seconds, 3)
    row.message = a.message if len(a.message) <= 600 else a.message[:600] + f"… ({len(a.message):,} chars)"
    if a.kind == "skipped":
        row.problems.append(f"not run: {a.message}")
        return row
    if a.kind in ("died", "timeout"):
        row.problems.append({"died": "the connection dropped", "timeout": a.message}[a.kind])
    elif want == "ok" and a.kind != "ok":
        row.problems.append(f"no result ({a.kind})")
    elif want == "error" and a.kind != "error":
        row.problems.append({"ok": "answered without an error",
                             "unchanged": "no error reached the client (the page was left unchanged)"}
                            .get(a.kind, f"answered {a.kind}, not an error"))
    if a.seconds >= max_s:
        row.problems.append(f"answer took {a.seconds:.1f} s (limit {max_s:g} s)")
    if a.kind in ("error", "info"):
        row.problems += [f"message: {p}" for p in message_problems(a.message)]
        leaks = path_leaks(a.message, sent, server_paths)
        if leaks:
            row.problems.append("reveals server paths: " + ", ".join(leaks[:3]))
    return row


# ---------------------------------------------------------------------------------------------
# the attack: clients, endpoints, uploads
class Attack:
    """What the cases share: the server, fresh clients (one per browser session), the app's
    endpoints, a folder for the files to upload, the server's limits and the criteria."""

    def __init__(self, server: Server, tmp: Path, limits, timeout: float = 30.0,
                 max_answer_s: float = MAX_ANSWER_S, finetune_dataset: str = "movielens-small"):
        from gradio_client import Client

        self.server, self.tmp, self.limits = server, Path(tmp), limits
        self.timeout, self.max_answer_s, self.finetune_dataset = timeout, max_answer_s, finetune_dataset
        self._Client = Client
        self.monitor = Client(server.url, verbose=False)
        info = self.monitor.view_api(print_info=False, return_format="dict")
        self.endpoints = {name: [p["parameter_name"] for p in e["parameters"]]
                          for name, e in info["named_endpoints"].items()}
        self.token = os.urandom(3).hex()
        self._files = 0
        self.server_paths = sorted({str(ROOT), str(self.tmp), str(Path.home()), str(self.tmp.resolve())},
                                   key=len, reverse=True)

    def client(self):
        """A new session: gradio keeps a State per client (session hash), as per browser tab."""
        return self._Client(self.server.url, verbose=False)

    def endpoint(self, word: str) -> str | None:
        """The page event whose name holds ``word`` (e.g. /on_upload), if the app exposes one."""
        return next((n for n in self.endpoints if word in n.lower()), None)

    def call(self, client, api_name: str, *args, html: bool = False) -> Answer:
        return call(client, api_name, *args, timeout=self.timeout, alive=self.server.alive, html=html)

    def recommend(self, client, history, dataset: str = "movielens-small", adapter: str = "auto",
                  n_candidates: int = 50, k: int = 10) -> Answer:
        return self.call(client, "/recommend", list(history), dataset, "score", adapter, n_candidates, k)

    def page_endpoint(self, word: str) -> str | None:
        """The page's own event (``/on_<word>...``), not a public API of the same word."""
        return next((n for n in self.endpoints if n.startswith("/on_") and word in n.lower()), None)

    def recommend_in_session(self, client, history, dataset: str, history_dataset: str | None = None,
                             adapter: str = "auto", n_candidates: int = 50, k: int = 10,
                             wait_s: float = 0.0) -> Answer:
        """The page's Recommend button in ``client``'s browser session: the public /recommend has no
        session and sees built-in datasets only, so a session's own uploads are reached only here.
        The history (a State the client cannot set) is typed into the search box and added with
        Enter (``/on_submit``) on ``history_dataset`` (default: ``dataset``). ``wait_s``: while the
        dataset is still being prepared (an info notice), ask again until then."""
        add, go = self.page_endpoint("submit"), self.page_endpoint("recommend")
        if not add or not go:
            return Answer("skipped", "the app has no page events to set a history and recommend in a session",
                          via="(none)")
        deadline = time.perf_counter() + wait_s
        for title in history:
            while True:
                a = self.call(client, add, history_dataset or dataset, title)
                kind, text = ("error", a.message) if a.kind != "ok" else classify_html(
                    a.data[-1] if isinstance(a.data, (list, tuple)) and a.data else a.data)
                if kind == "ok":
                    break
                if kind != "info" or time.perf_counter() >= deadline:
                    return Answer(kind if a.kind == "ok" else a.kind, f"setting the history: {text}",
                                  a.seconds, add)
                time.sleep(1.0)
        t0 = time.perf_counter()
        while True:
            a = self.call(client, go, dataset, "score", adapter, n_candidates, k, html=True)
            if a.kind != "info" or time.perf_counter() >= deadline:
                if wait_s:
                    a.seconds = time.perf_counter() - t0  # the whole wait is what the session saw
                return a
            time.sleep(1.0)

    def judge(self, row: Row, a: Answer, **kw) -> Row:
        judge(row, a, max_s=kw.pop("max_s", self.max_answer_s), server_paths=self.server_paths, **kw)
        row.up = self.server.alive()
        if not row.up:
            row.problems.append("the server is down after this request")
        return row

    def upload(self, client, name: str, interactions: str, items: str) -> Answer:
        """Through the page's upload event; without one, AppContext.add_upload when in process."""
        from gradio_client import handle_file

        self._files += 1
        folder = self.tmp / "files" / f"{self._files:02d}-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "interactions.csv", folder / "items.csv"]
        paths[0].write_text(interactions)
        paths[1].write_text(items)
        ep = self.endpoint("upload")
        if ep:
            return self.call(client, ep, handle_file(str(paths[0])), handle_file(str(paths[1])), name, html=True)
        if self.server.ctx is None:
            return Answer("skipped", "the app has no upload endpoint; run with --in-process to upload "
                                     "through AppContext.add_upload", via="(none)")
        t0 = time.perf_counter()
        try:
            # the client's browser session: an upload belongs to one, as it does through the page
            self.server.ctx.add_upload(str(paths[0]), str(paths[1]), name, client.session_hash)
        except Exception as e:  # noqa: BLE001 - the app's own message for the user
            return Answer("error", str(e), time.perf_counter() - t0, "AppContext.add_upload")
        return Answer("ok", "", time.perf_counter() - t0, "AppContext.add_upload")

    def start_finetune(self, client, adapter: str, steps: int) -> Answer:
        ep = self.endpoint("start")
        if not ep:
            return Answer("skipped", "the app has no fine-tune endpoint", via="(none)")
        return self.call(client, ep, self.finetune_dataset, ["recommend"], steps, 4, 0.0002, adapter, 2, html=True)


def tiny_dataset(users: int = 30, per_user: int = 8, items: int = 24, titles: dict | None = None,
                 extra_rows: tuple[str, ...] = ()) -> tuple[str, str]:
    """(interactions.csv, items.csv) texts: 30 users x 8 interactions over 24 items in 3 genres,
    enough for SASRec and a fine-tune; ``titles`` replaces some titles, ``extra_rows`` are appended."""
    genres = ["Jazz", "Rock", "Folk"]
    titles = titles or {}
    item_rows = ["item_id,title,categories"] + [f"b{i:02d},{titles.get(i, f'Song number {i}')},{genres[i % 3]}"
                                                 for i in range(items)]
    rows = ["user_id,item_id,timestamp"]
    for u in range(users):
        picks = [i for i in range(items) if i % 3 == u % 3] + [(u + 1) % items]
        for t, i in enumerate(picks[:per_user]):
            rows.append(f"u{u:02d},b{i:02d},{1000 + t}")
    return "\n".join(rows + list(extra_rows)) + "\n", "\n".join(item_rows) + "\n"


def names_place(msg: str, file: str, line: int, column: str) -> list[str]:
    """An upload error must say where: the file, the line and the column."""
    missing = [what for what, ok in (("the file", file in msg), (f"line {line}", re.search(rf"\bline {line}\b", msg)),
                                     (f"column {column}", column in msg)) if not ok]
    return [f"does not name {', '.join(missing)}"] if missing else []


# ---------------------------------------------------------------------------------------------
# the cases of issue 18
def case_sizes(att: Attack) -> list[Row]:
    """1. /recommend with k and n_candidates of 100,000, and k one above the limit."""
    c, lim = att.client(), att.limits
    k = lim.max_results + 1
    out = []
    for rid, n, kk in (("1a", HUGE, HUGE), ("1b", max(k, 50), k)):
        row = Row(rid, "request sizes", f"/recommend k={kk:,} n_candidates={n:,}")
        out.append(att.judge(row, att.recommend(c, MOVIES, n_candidates=n, k=kk)))
    return out


def case_long_title(att: Attack) -> list[Row]:
    """2. An items.csv with a 100,000-character title, and a history holding that item."""
    c = att.client()
    title = ("A title that goes on and on " * (HUGE // 28 + 1))[:HUGE]
    name = f"abuse-title-{att.token}"
    a = att.upload(c, name, *tiny_dataset(titles={0: title}))
    row = att.judge(Row("2a", "long title", f"upload items.csv with a {HUGE:,}-character title"), a)
    if a.kind == "error":
        row.problems += names_place(a.message, "items.csv", 2, "title")
    history = [title, "Song number 3"]
    if a.kind == "ok":  # accepted: the request must still be answered, within memory, prompt cut to fit
        b = att.recommend(c, history, dataset=name)
        row2 = att.judge(Row("2b", "long title", f"/recommend on {name} with the {HUGE:,}-character title",
                             notes="the upload was accepted: any clear answer within the timeout"),
                         b, want="any", max_s=att.timeout)
    else:
        b = att.recommend(c, [title, *MOVIES[:2]])
        row2 = att.judge(Row("2b", "long title", f"/recommend on movielens-small with the {HUGE:,}-character "
                                                 "title in the history"), b)
    return [row, row2]


def case_int64(att: Attack) -> list[Row]:
    """3. A timestamp beyond int64 in an uploaded interactions.csv."""
    inter, items = tiny_dataset(extra_rows=("ana,b03,99999999999999999999",))
    line = inter.count("\n")  # the last line of the file
    a = att.upload(att.client(), f"abuse-int64-{att.token}", inter, items)
    row = att.judge(Row("3", "timestamp beyond int64", "upload interactions.csv with `ana,b03,99999999999999999999`"), a)
    if a.kind == "error":
        row.problems += names_place(a.message, "interactions.csv", line, "timestamp")
    return [row]


def case_sessions(att: Attack) -> list[Row]:
    """4. Another session's dataset, a dataset that does not exist, and a taken name."""
    a, b = att.client(), att.client()
    mine, missing = f"abuse-private-{att.token}", f"abuse-nosuch-{att.token}"
    inter, items = tiny_dataset()
    setup = att.upload(a, mine, inter, items)
    if setup.kind != "ok":
        return [Row("4", "other sessions", f"session A uploads {mine}", setup.via, setup.kind, setup.message,
                    round(setup.seconds, 3), att.server.alive(), problems=["setup: the upload was refused"])]
    # B asks in its own browser session (the public /recommend has none and never sees uploads):
    # a history of built-in titles, then A's dataset name and a name nobody uploaded
    theirs = att.recommend_in_session(b, MOVIES[:2], mine, history_dataset="movielens-small")
    nosuch = att.recommend_in_session(b, MOVIES[:2], missing, history_dataset="movielens-small")
    r1 = att.judge(Row("4a", "other sessions", "session B: Recommend (its page) on session A's upload"), theirs)
    r2 = att.judge(Row("4b", "other sessions", "session B: Recommend (its page) on a dataset that does not exist"),
                   nosuch)
    if theirs.kind != nosuch.kind or normalized(theirs.message, mine) != normalized(nosuch.message, missing):
        r1.problems.append("B can tell A's dataset from a missing one")
    api = att.recommend(b, MOVIES[:2], dataset=mine)
    api_nosuch = att.recommend(b, MOVIES[:2], dataset=missing)
    r1b = att.judge(Row("4a2", "other sessions", "any client: /recommend (API) on session A's upload"), api)
    if api.kind != api_nosuch.kind or normalized(api.message, mine) != normalized(api_nosuch.message, missing):
        r1b.problems.append("the API tells A's dataset from a missing one")
    taken = att.upload(b, mine, inter, items)
    fresh = att.upload(b, f"abuse-fresh-{att.token}", inter, items)
    r3 = att.judge(Row("4c", "other sessions", "session B uploads under session A's dataset name",
                       notes="must look the same as an upload under a fresh name"), taken, want="any")
    if taken.kind != fresh.kind or normalized(taken.message, mine) != normalized(fresh.message, f"abuse-fresh-{att.token}"):
        r3.problems.append(f"B learns the name is taken (a fresh name: {fresh.kind} {fresh.message[:80]!r})")
    own = att.recommend_in_session(a, ["Song number 0", "Song number 3"], mine, wait_s=att.timeout)
    r4 = att.judge(Row("4d", "other sessions", "session A: Recommend (its page) on its own upload",
                       notes="the control: an upload stays usable by the session that made it "
                             "(preparing it may take until the request timeout)"),
                   own, want="ok", max_s=att.timeout)
    return [r1, r2, r1b, r3, r4]


def case_adapters(att: Attack) -> list[Row]:
    """5. Adapter arguments that are paths: they must neither reach the disk nor reveal it."""
    c = att.client()
    answers = {}
    rows = []
    for rid, adapter in (("5a", "/etc"), ("5b", "/no/such/dir"), ("5c", "../x")):
        answers[adapter] = a = att.recommend(c, MOVIES, adapter=adapter)
        rows.append(att.judge(Row(rid, "adapter paths", f"/recommend adapter={adapter!r}"), a, sent=adapter))
    etc, nosuch = answers["/etc"], answers["/no/such/dir"]
    if etc.kind != nosuch.kind or normalized(etc.message, "/etc") != normalized(nosuch.message, "/no/such/dir"):
        rows[0].problems.append("reveals that /etc exists (its answer differs from /no/such/dir's)")
    return rows


def case_finetunes(att: Attack) -> list[Row]:
    """6. A fine-tune of 100,000 steps, more queued fine-tunes than allowed, two in one session."""
    lim = att.limits
    row = att.judge(Row("6a", "fine-tune quotas", f"start a fine-tune of {HUGE:,} steps"),
                    att.start_finetune(att.client(), f"abuse-huge-{att.token}", HUGE))
    allowed = lim.max_finetune_jobs + lim.max_queued_jobs
    answers, clients = [], []
    for i in range(allowed + 3):
        clients.append(att.client())
        answers.append(att.start_finetune(clients[-1], f"abuse-q{i}-{att.token}", 1))
    accepted = [a for a in answers if a.kind == "ok"]
    refused = [a for a in answers if a.kind != "ok"]
    many = Row("6b", "fine-tune quotas", f"{len(answers)} sessions start a 1-step fine-tune each",
               answers[-1].via, f"{len(accepted)} accepted, {len(refused)} refused",
               refused[-1].message if refused else "", round(max(a.seconds for a in answers), 3),
               notes=f"the server may run {lim.max_finetune_jobs} and queue {lim.max_queued_jobs}")
    if len(accepted) > allowed:
        many.problems.append(f"accepted {len(accepted)} fine-tunes; the limit is {allowed}")
    for a in refused:  # each refusal must itself be a clear, fast error
        many.problems += [p for p in judge(Row("", "", ""), a, max_s=att.max_answer_s,
                                           server_paths=att.server_paths).problems if p not in many.problems]
    many.problems += [f"an accepted request took {a.seconds:.1f} s" for a in accepted if a.seconds >= att.max_answer_s]
    many.up = att.server.alive()
    # the last session that got a job: the likeliest to be still waiting, so a second one must be refused
    again = next((c for c, a in reversed(list(zip(clients, answers))) if a.kind == "ok"), clients[0])
    second = att.start_finetune(again, f"abuse-again-{att.token}", 1)
    row3 = att.judge(Row("6c", "fine-tune quotas", "a session that has a fine-tune starts another"), second)
    if f"abuse-again-{att.token}" in second.message:
        row3.problems.append("a second job was queued for the session")
    cancel_all(att, clients + [again])
    return [row, many, row3]


def cancel_all(att: Attack, clients) -> None:
    """Leave no fine-tune running for the next case (the page's Cancel, when the app names one)."""
    ep = att.endpoint("cancel")
    for c in clients if ep else []:
        att.call(c, ep)


def case_one_interaction(att: Attack) -> list[Row]:
    """7. An upload where every user has a single interaction (nothing to train or test on)."""
    a = att.upload(att.client(), f"abuse-single-{att.token}", *tiny_dataset(per_user=1))
    return [att.judge(Row("7", "one interaction per user", "upload where every user has one interaction"), a)]


CASES = {"1": case_sizes, "2": case_long_title, "3": case_int64, "4": case_sessions, "5": case_adapters,
         "6": case_finetunes, "7": case_one_interaction}
ORDER = ["1", "2", "3", "4", "5", "7", "6"]  # fine-tunes last: an accepted one keeps the CPUs busy


# ---------------------------------------------------------------------------------------------
# running the cases, the report
def parse_cases(text: str | None) -> list[str]:
    """'1,5' or '1-3,7' -> the cases in run order; None or 'all' -> every case."""
    if not text or text == "all":
        return list(ORDER)
    wanted: set[str] = set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"--cases: {part!r} is not a case number or range (1-7)")
        wanted |= {str(i) for i in range(int(lo), int(hi or lo) + 1)}
    unknown = sorted(wanted - set(CASES))
    if unknown:
        raise ValueError(f"--cases: no case {', '.join(unknown)} (cases are 1-7)")
    return [k for k in ORDER if k in wanted]


def server_answers(att: Attack) -> bool:
    return att.server.alive() and att.call(att.monitor, "/status").kind == "ok"


def run_case(att: Attack, key: str, dog: Watchdog, max_rss_gb: float) -> list[Row]:
    """One case with its own memory peak; the server is up before it (restarted if the bench may)."""
    fn = CASES[key]
    title = (fn.__doc__ or "").split("\n")[0]
    if not server_answers(att) and not (att.server.restart() and server_answers(att)):
        return [Row(key, title, "", problems=["the server was down before the case and could not be restarted"],
                    up=False)]
    dog.reset()
    try:
        rows = fn(att)
    except Exception as e:  # noqa: BLE001 - a bench that cannot finish a case says so and goes on
        rows = [Row(key, title, "", problems=[f"the case could not run: {type(e).__name__}: {e}"[:300]])]
    up = server_answers(att)
    peak = gb(dog.peak_kb())
    for r in rows:
        r.rss_peak_gb = peak
        if dog.killed:
            r.problems.append(f"killed by the bench above {dog.kill_kb / 2**20:.0f} GB")
        if peak is not None and peak >= max_rss_gb:
            r.problems.append(f"peak RSS {peak:.2f} GB (limit {max_rss_gb:g} GB)")
        if not up and r.up:
            r.up = False
            r.problems.append("the server does not answer /status after the case")
    if not up and hasattr(att.server, "log_tail"):
        rows[-1].notes += " server log: " + att.server.log_tail(5).replace("\n", " | ")
    return rows


def run_cases(server: Server, cases: list[str], tmp: Path, limits, *, timeout: float = 30.0,
              max_answer_s: float = MAX_ANSWER_S, max_rss_gb: float = MAX_RSS_GB,
              kill_rss_gb: float = KILL_RSS_GB, finetune_dataset: str = "movielens-small") -> dict:
    """Run ``cases`` (keys of CASES) against ``server``; returns the report (rows, peak RSS, counts)."""
    att = Attack(server, tmp, limits, timeout, max_answer_s, finetune_dataset)
    dog = Watchdog(server, int(kill_rss_gb * 2**20))
    t0 = time.perf_counter()
    rows: list[Row] = []
    try:
        for key in cases:
            print(f"case {key}: {(CASES[key].__doc__ or '').splitlines()[0]}", flush=True)
            new = run_case(att, key, dog, max_rss_gb)
            for r in new:
                print(f"  {r.id:3s} {'PASS' if r.ok else 'FAIL'} {r.answer} {r.seconds} s "
                      f"{'; '.join(r.problems)[:200]}", flush=True)
            rows += new
    finally:
        dog.stop()
    peaks = [r.rss_peak_gb for r in rows if r.rss_peak_gb is not None]
    info = {"log_tracebacks": server.log_tracebacks()} if hasattr(server, "log_tracebacks") else {}
    return {"cases": cases, "rows": [r.to_dict() for r in rows],
            "passed": sum(r.ok for r in rows), "failed": sum(not r.ok for r in rows),
            "peak_rss_gb": max(peaks) if peaks else None, "seconds": round(time.perf_counter() - t0, 1),
            "server": {"mode": server.mode, "url": server.url, "restarts": server.restarts, **server.startup,
                       **info},
            "endpoints_used": sorted({r.via for r in rows if r.via.startswith("/") or "." in r.via}),
            "criteria": {"max_answer_s": max_answer_s, "max_rss_gb": max_rss_gb, "kill_rss_gb": kill_rss_gb,
                         "max_message_chars": MAX_MESSAGE_CHARS, "request_timeout_s": timeout}}


def markdown(report: dict) -> str:
    c = report["criteria"]
    lines = ["# recdemo abuse bench (issue 18)", "",
             f"- command: `{report.get('command', '')}`",
             f"- started: {report.get('started', '')}; load at start: `{report.get('uptime', '')}`; "
             f"{report.get('cpu_count')} CPUs",
             f"- server: {report['server']['mode']} ({report.get('model', '')}), "
             + ", ".join(f"{k} {v}" for k, v in report["server"].items() if k not in ("mode", "url")),
             f"- criteria: up; an error; answered in under {c['max_answer_s']:g} s; one sentence of at most "
             f"{c['max_message_chars']} characters without traceback or server path; peak RSS under "
             f"{c['max_rss_gb']:g} GB (requests time out after {c['request_timeout_s']:g} s)",
             f"- result: {report['passed']} PASS, {report['failed']} FAIL; peak RSS {report['peak_rss_gb']} GB; "
             f"{report['seconds']} s; load at the end: `{report.get('uptime_at_end', '')}`", "",
             "| id | request | via | answer | s | up | peak RSS GB | result | message / why |",
             "|---|---|---|---|---:|---|---:|---|---|"]
    for r in report["rows"]:
        why = "; ".join(r["problems"]) or ""
        msg = (r["message"] or "")[:160].replace("|", "\\|").replace("\n", " ")
        text = " — ".join(x for x in (why, f"“{msg}”" if msg else "") if x)
        if r.get("notes"):
            text += f" ({r['notes'].strip()})"
        lines.append(f"| {r['id']} | {r['request']} | {r['via']} | {r['answer']} | "
                     f"{'' if r['seconds'] is None else r['seconds']} | {'yes' if r['up'] else 'NO'} | "
                     f"{r['rss_peak_gb']} | {r['result']} | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_results(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "abuse.json", out / "abuse.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    return paths


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="all", help="e.g. 1,5 or 1-3 (default: all; 6 always runs last)")
    ap.add_argument("--out", help="write abuse.json and abuse.md to this folder (default: print only)")
    ap.add_argument("--url", help="attack an app that is already running (its memory is read with --pid)")
    ap.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory")
    ap.add_argument("--in-process", action="store_true", help="run the app in this process (AppContext)")
    ap.add_argument("--no-warmup-wait", action="store_true",
                    help="start once the model is loaded, before the app's warm-up request has finished "
                         "(faster; the first answers then share the CPUs with it)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as unanswered")
    ap.add_argument("--max-answer-s", type=float, default=MAX_ANSWER_S)
    ap.add_argument("--max-rss-gb", type=float, default=MAX_RSS_GB)
    ap.add_argument("--kill-rss-gb", type=float, default=KILL_RSS_GB)
    return ap.parse_args(argv)


def make_server(args, tmp: Path) -> Server:
    if args.url:
        return Server(args.url, args.pid)
    if not args.in_process:
        return SubprocessServer(tmp, warm=not args.no_warmup_wait)
    from recdemo.app.context import AppContext
    from recdemo.config import Config

    env = app_env(tmp, 0)  # the same folders as a subprocess gets
    cfg = (Config.from_env().set("llm", "adapter_dir", env["RECDEMO_ADAPTER_DIR"])
           .set("retrieval", "checkpoint_dir", env["RECDEMO_CHECKPOINT_DIR"])
           .set("retrieval", "cache_dir", env["RECDEMO_SASREC_CACHE"]).set("llm", "ranker", "score"))
    server = InProcessServer(AppContext(cfg, upload_root=str(tmp / "uploads")))
    server.ctx.warm_done.wait(600)
    return server


def main(argv=None) -> int:
    import logging
    import shutil

    from recdemo.config import Config

    args = parse_args(argv)
    cases = parse_cases(args.cases)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    head = {"command": shlex.join([Path(sys.executable).name, "bench/abuse.py", *(argv if argv is not None else sys.argv[1:])]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "uptime": uptime,
            "load_avg_at_start": list(os.getloadavg()), "cpu_count": os.cpu_count(),
            "model": Config.from_env().llm.model}
    print(f"load at start: {uptime}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="recdemo-abuse-"))
    server = None
    try:
        server = make_server(args, tmp)
        report = {**head, **run_cases(server, cases, tmp, Config.from_env().limits, timeout=args.timeout,
                                      max_answer_s=args.max_answer_s, max_rss_gb=args.max_rss_gb,
                                      kill_rss_gb=args.kill_rss_gb)}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report["uptime_at_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(markdown(report))
    if args.out:
        for p in write_results(report, Path(args.out)):
            print(f"wrote {p}")
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
