"""Load test of the demo: start time, single-user latency, then N concurrent gradio_client users.

    python bench/load.py                           # launches `python app.py` on a free port, 4 then 8 users, 60 s each
    python bench/load.py --users 4,8,16 --seconds 60
    python bench/load.py --url http://127.0.0.1:7860 --users 4
    python bench/load.py --device cuda --model meta-llama/Llama-2-7b-hf --dtype bfloat16 --users 16

Measures (reported, never asserted):
- server_up_s: launch -> the page answers HTTP 200 (the page is interactive from here: the model
  loads in the background and the header says so);
- model_ready_s: launch -> the /status API says the model is loaded;
- single-user latency of /recommend (sequential requests, after one warm-up request);
- for each --users level: p50/p95 latency, throughput and errors of that many concurrent clients
  for --seconds (levels run one after another on the same server).
Every request sends a history no earlier request sent (real users' training histories, cut at a
random length), so no answer comes from the server's profile cache; the JSON says whether the pool ran
out and histories repeated. An explanation row whose item and evidence an earlier request had comes
from the explainer's cache, as in a real room: bench/explain_cache.py counts how often (1-2% of the
rows of the first 60 requests on movielens-small). Prints a table, writes bench/results/load.json and
load.md. --device / --model / --dtype are passed to the launched server (RECDEMO_DEVICE, RECDEMO_LLM,
RECDEMO_DTYPE).
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def histories(dataset_name: str, n: int, seed: int) -> list[list[str]]:
    """Up to ``n`` distinct histories as title lists: real users' training histories, each cut to
    its last 3-10 items, then (for more than there are users) to other lengths and windows."""
    from recdemo.config import Config
    from recdemo.data import load_dataset

    cfg = Config.from_env()
    ds = load_dataset(dataset_name, root=cfg.data.root)
    rng = random.Random(seed)
    seqs = [[int(i) for i in s] for s in ds.train_sequences() if len(s) >= 3]
    rng.shuffle(seqs)
    out, seen = [], set()
    for _ in range(20):  # passes over the users, each pass another random cut of each
        for s in seqs:
            keep = rng.randint(3, min(10, len(s)))
            end = len(s) - rng.randint(0, max(0, len(s) - keep)) if out else len(s)
            h = tuple(s[end - keep:end])
            if h not in seen:
                seen.add(h)
                out.append([ds.catalog.titles[i] for i in h])
            if len(out) >= n:
                return out
    return out


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an app that is already running (default: launch app.py)")
    ap.add_argument("--users", default="4,8", help="concurrency levels, comma separated (each runs --seconds)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--single", type=int, default=5, help="sequential single-user requests")
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--ranker", default="score")
    ap.add_argument("--device", help="the launched server's device (RECDEMO_DEVICE: auto, cpu, cuda)")
    ap.add_argument("--model", help="the launched server's LLM (RECDEMO_LLM: smollm2-135m, a HF id, a folder)")
    ap.add_argument("--dtype", help="the launched server's dtype (RECDEMO_DTYPE)")
    ap.add_argument("--pool", type=int, default=5000, help="distinct histories to draw requests from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "load.json"))
    args = ap.parse_args()
    args.levels = [int(u) for u in str(args.users).split(",") if u.strip()]
    if not args.levels or min(args.levels) < 1:
        ap.error("--users: one or more positive numbers, e.g. 4,8")
    if args.url and (args.device or args.model or args.dtype):
        ap.error("--device/--model/--dtype configure a launched server, not --url")
    return args


def launch_server(args) -> tuple[subprocess.Popen | None, str, dict, Path | None]:
    """(process, url, start-up figures, log path): app.py on a free port, waited for until its own
    warm-up request is done."""
    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "RECDEMO_HOST": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    for flag, var in (("device", "RECDEMO_DEVICE"), ("model", "RECDEMO_LLM"), ("dtype", "RECDEMO_DTYPE")):
        if getattr(args, flag):
            env[var] = getattr(args, flag)
    log_path = ROOT / "bench" / "results" / "tmp_load_server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    startup: dict = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    if not wait_http(url, 180):
        proc.terminate()
        raise SystemExit(f"the app did not start; see {log_path}")
    startup["server_up_s"] = time.perf_counter() - t0
    client = Client(url, verbose=False)
    while (state := client.predict(api_name="/status")["state"]) != "ready":
        if state == "error" or time.perf_counter() - t0 > 600:
            break
        time.sleep(0.2)
    startup["model_ready_s"] = time.perf_counter() - t0
    while not client.predict(api_name="/status")["warmed_up"] and time.perf_counter() - t0 < 900:
        time.sleep(0.2)  # the app's own throw-away first request; ours should not queue behind it
    startup["warm_request_done_s"] = time.perf_counter() - t0
    return proc, url, startup, log_path


def main() -> int:
    args = parse_args()
    from gradio_client import Client

    proc, startup, url = None, {}, args.url
    if url is None:
        proc, url, startup, _ = launch_server(args)
    try:
        return run(args, url, startup, Client)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)


class Pool:
    """Hands out the histories in order, each once; after the last it starts again (and says so)."""

    def __init__(self, items: list):
        self.items, self.used, self._lock = items, 0, threading.Lock()

    def take(self):
        with self._lock:
            self.used += 1
            return self.items[(self.used - 1) % len(self.items)]

    @property
    def repeated(self) -> bool:
        return self.used > len(self.items)


def concurrent_level(args, url: str, Client, pool: Pool, users: int, call) -> dict:
    """``users`` clients sending requests back to back for ``args.seconds``."""
    lat: list[float] = []
    errors: list[str] = []
    stop = time.time() + args.seconds
    lock = threading.Lock()

    def user():
        c = Client(url, verbose=False)
        while time.time() < stop:
            try:
                dt, r = call(c, pool.take())
                ok = len(r.get("results", [])) == 10
                with lock:
                    (lat.append(dt) if ok else errors.append(f"{len(r.get('results', []))} results"))
            except Exception as e:  # noqa: BLE001 - counted, the run goes on
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=user) for _ in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"users": users, "seconds": wall, "requests": len(lat), "errors": len(errors),
            "error_samples": errors[:5], "p50_s": pct(lat, .5), "p95_s": pct(lat, .95),
            "mean_s": statistics.mean(lat) if lat else None, "throughput_rps": len(lat) / wall if wall else None}


def run(args, url: str, startup: dict, Client) -> int:
    from recdemo.llm.models import describe_cpu

    pool = Pool(histories(args.dataset, args.pool, args.seed))
    client = Client(url, verbose=False)

    def call(c, h):
        t = time.perf_counter()
        res = c.predict(h, args.dataset, args.ranker, api_name="/recommend")
        return time.perf_counter() - t, res

    first, res = call(client, pool.take())  # the first request after load (lazy imports, caches)
    single = [call(client, pool.take())[0] for _ in range(args.single)]
    levels = [concurrent_level(args, url, Client, pool, users, call) for users in args.levels]
    report = {
        "url": url, "dataset": args.dataset, "ranker": args.ranker, "model": res.get("model"),
        "adapter": res.get("adapter"), "machine": describe_cpu(),
        "load_avg_end": os.getloadavg(),
        "server": {"device": args.device, "model": args.model, "dtype": args.dtype} if args.url is None else None,
        **startup, "first_request_s": first,
        "single_user": {"n": len(single), "p50_s": pct(single, .5), "max_s": max(single) if single else None},
        "server_timings_last_single": res.get("timings", {}),
        "histories": {"distinct": len(pool.items), "sent": pool.used, "repeated": pool.repeated},
        "concurrent": levels,
    }
    text = table(report)
    print(text)
    from recdemo.storage import write_json_atomically, write_text_atomically

    json_path = Path(args.json)
    write_json_atomically(json_path, report, indent=2)
    write_text_atomically(json_path.with_suffix(".md"), text + "\n")
    print(f"wrote {json_path} and {json_path.with_suffix('.md').name}")
    return 0 if not any(level["errors"] for level in levels) else 1


def table(r: dict) -> str:
    def s(v):
        return f"{v:.2f}" if v is not None else "-"

    h, m = r["histories"], r.get("machine", {})
    lines = [f"recdemo load test: {r['dataset']}, ranker={r['ranker']}, {r['model']}, adapter={r['adapter']}, "
             f"{m.get('cpus', r.get('cpu_count'))} CPUs; {h['sent']} requests over {h['distinct']} distinct histories "
             f"({'some repeated' if h['repeated'] else 'none repeated'})",
             f"CPU: {m.get('cpu')}, {m.get('capability')}, native bf16: {m.get('native_bf16')}; "
             f"load average at the end {s(r.get('load_avg_end', [None])[0])}", "",
             "| measure | seconds |", "|---|---|",
             f"| server up (page served) | {s(r.get('server_up_s'))} |",
             f"| model ready | {s(r.get('model_ready_s'))} |",
             f"| first request | {s(r['first_request_s'])} |",
             f"| single user p50 (n={r['single_user']['n']}) | {s(r['single_user']['p50_s'])} |", "",
             "| users | requests | errors | p50 s | p95 s | answers/s |", "|---|---|---|---|---|---|"]
    for c in r["concurrent"]:
        lines.append(f"| {c['users']} | {c['requests']} | {c['errors']} | {s(c['p50_s'])} | {s(c['p95_s'])} | "
                     f"{s(c['throughput_rps'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
