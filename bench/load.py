"""Load test of the demo: start time, single-user latency, then N concurrent gradio_client users.

    python bench/load.py                      # launches `python app.py` on a free port, 4 users, 60 s
    python bench/load.py --url http://127.0.0.1:7860 --users 4 --seconds 60
    python bench/load.py --ranker palr --seconds 30

Measures (reported, never asserted):
- server_up_s: launch -> the page answers HTTP 200 (the page is interactive from here: the model
  loads in the background and the header says so);
- model_ready_s: launch -> the /status API says the model is loaded;
- single-user latency of /recommend (sequential requests, after one warm-up request);
- p50/p95 latency, throughput and errors with --users concurrent clients for --seconds.
Prints a table and writes bench/results/load.json.
"""
from __future__ import annotations

import argparse
import json
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
    """Real users' training histories (last 3-10 items) as title lists."""
    from recdemo.config import Config
    from recdemo.data import load_dataset

    cfg = Config.from_env()
    ds = load_dataset(dataset_name, root=cfg.data.root)
    rng = random.Random(seed)
    seqs = [s for s in ds.train_sequences() if len(s) >= 3]
    out = []
    for s in rng.sample(seqs, min(n, len(seqs))):
        keep = rng.randint(3, 10)
        out.append([ds.catalog.titles[int(i)] for i in s[-keep:]])
    return out


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an app that is already running (default: launch app.py)")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--single", type=int, default=5, help="sequential single-user requests")
    ap.add_argument("--dataset", default="movielens-small")
    ap.add_argument("--ranker", default="score")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "load.json"))
    args = ap.parse_args()

    from gradio_client import Client

    proc, log_path = None, None
    startup: dict = {}
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "RECDEMO_HOST": "127.0.0.1",
               "GRADIO_ANALYTICS_ENABLED": "False"}
        log_path = ROOT / "bench" / "results" / "tmp_load_server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                                stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        if not wait_http(url, 180):
            proc.terminate()
            print(f"the app did not start; see {log_path}")
            return 1
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
    try:
        return run(args, url, startup, Client)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)


def run(args, url: str, startup: dict, Client) -> int:
    pool = histories(args.dataset, 200, args.seed)
    client = Client(url, verbose=False)

    def call(c, h):
        t = time.perf_counter()
        res = c.predict(h, args.dataset, args.ranker, api_name="/recommend")
        return time.perf_counter() - t, res

    first, res = call(client, pool[0])  # the first request after load (lazy imports, caches)
    single = []
    for h in pool[1:1 + args.single]:
        single.append(call(client, h)[0])
    server_timings = res.get("timings", {})

    lat: list[float] = []
    errors: list[str] = []
    stop = time.time() + args.seconds
    lock = threading.Lock()

    def user(uid: int):
        c = Client(url, verbose=False)
        rng = random.Random(args.seed + uid)
        while time.time() < stop:
            try:
                dt, r = call(c, rng.choice(pool))
                ok = len(r.get("results", [])) == 10
                with lock:
                    (lat.append(dt) if ok else errors.append(f"{len(r.get('results', []))} results"))
            except Exception as e:  # noqa: BLE001 - counted, the run goes on
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=user, args=(u,)) for u in range(args.users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    report = {
        "url": url, "dataset": args.dataset, "ranker": args.ranker, "model": res.get("model"),
        "adapter": res.get("adapter"), "cpu_count": os.cpu_count(), **startup,
        "first_request_s": first, "single_user": {"n": len(single), "p50_s": pct(single, .5),
                                                   "max_s": max(single) if single else None},
        "server_timings_last_single": server_timings,
        "concurrent": {"users": args.users, "seconds": wall, "requests": len(lat), "errors": len(errors),
                       "error_samples": errors[:5], "p50_s": pct(lat, .5), "p95_s": pct(lat, .95),
                       "mean_s": statistics.mean(lat) if lat else None,
                       "throughput_rps": len(lat) / wall if wall else None},
    }
    rows = [("server up (page served)", startup.get("server_up_s")),
            ("model ready", startup.get("model_ready_s")),
            ("first request", first),
            (f"single user p50 (n={len(single)})", report["single_user"]["p50_s"]),
            (f"{args.users} users p50", report["concurrent"]["p50_s"]),
            (f"{args.users} users p95", report["concurrent"]["p95_s"])]
    print(f"\nrecdemo load test: {args.dataset}, ranker={args.ranker}, {res.get('model')}, "
          f"adapter={res.get('adapter')}, {os.cpu_count()} CPUs")
    print(f"{'measure':34s} {'seconds':>8s}")
    for name, v in rows:
        print(f"{name:34s} {('%.2f' % v) if v is not None else '-':>8s}")
    c = report["concurrent"]
    print(f"{'requests / errors':34s} {c['requests']:>4d} / {c['errors']}")
    print(f"{'throughput (req/s)':34s} {c['throughput_rps'] or 0:8.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
