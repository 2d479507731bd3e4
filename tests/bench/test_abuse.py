"""bench/abuse.py: its judging rules, its case logic over HTTP against an app with a fake model
(tests/_app_fakes.py), and, marked integration, case 1 against the real app with the embedded model."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _app_fakes import TITLES, FakeRecommender, FakeService, fake_context, fake_finetune
from conftest import load_bench

ROOT = Path(__file__).resolve().parents[2]
abuse = load_bench("abuse")


class GuardedRecommender(FakeRecommender):
    """Refuses what a hardened pipeline refuses, with the project's own checks (LimitsConfig.check,
    the upload/adapter name rule); ``delay`` and ``fail_with`` shape the answer of other requests."""

    def __init__(self, limits):
        super().__init__(titles=[*TITLES, "Song number 0", "Song number 3"])  # + the bench's uploads
        self.limits, self.delay = limits, 0.0

    def recommend_stages(self, history, ranker="score", n_candidates=50, k=10, adapter="auto", **kw):
        # the app streams the stages (events.run_stages): the one call every request reaches
        from recdemo.app.uploads import check_name

        time.sleep(self.delay)
        self.limits.check("max_candidates", int(n_candidates), "candidates")
        self.limits.check("max_results", int(k), "results")
        if adapter not in (None, "auto"):
            check_name(adapter, "Adapter")
        yield from super().recommend_stages(history, ranker, n_candidates, k, adapter, **kw)


@pytest.fixture(scope="module")
def fake_app(tmp_path_factory):
    from recdemo.config import Config

    tmp = tmp_path_factory.mktemp("abuse-app")
    rec, service = GuardedRecommender(Config().limits), FakeService()
    # fine-tunes slow enough that the queued ones are still waiting when the bench counts them
    ctx = fake_context(tmp, recommender=rec, service=service,
                       finetune_runner=fake_finetune(service, step_seconds=0.5))
    server = abuse.InProcessServer(ctx, warmup=False)
    yield server, rec
    server.stop()


@pytest.fixture
def rec(fake_app):
    r = fake_app[1]
    r.delay, r.fail_with = 0.0, None
    yield r
    r.delay, r.fail_with = 0.0, None


def rss_limit_gb() -> float:
    """The in-process app's memory is pytest's whole process, which holds what earlier tests left
    resident (their models and data): a case may add abuse.MAX_RSS_GB to it, not reach it."""
    return abuse.proc_kb(os.getpid(), "VmRSS") / 2**20 + abuse.MAX_RSS_GB


def run(fake_app, tmp_path, cases, **kw):
    server = fake_app[0]
    return abuse.run_cases(server, abuse.parse_cases(cases), tmp_path, server.ctx.cfg.limits,
                           max_rss_gb=rss_limit_gb(), **kw)


def rows_by_id(report):
    return {r["id"]: r for r in report["rows"]}


# -- judging rules --
def test_parse_cases_orders_finetunes_last_and_refuses_unknown_cases():
    assert abuse.parse_cases("6,1") == ["1", "6"]
    assert abuse.parse_cases("5-7") == ["5", "7", "6"]
    assert abuse.parse_cases(None) == abuse.ORDER and sorted(abuse.ORDER) == sorted(abuse.CASES)
    for bad in ("8", "x", "1-"):
        with pytest.raises(ValueError, match="--cases"):
            abuse.parse_cases(bad)


def test_message_problems_want_one_short_sentence():
    from recdemo.config import LimitsConfig

    with pytest.raises(ValueError) as e:
        LimitsConfig().check("max_results", 51, "results")
    assert abuse.message_problems(str(e.value)) == []
    assert abuse.message_problems("items.csv, line 2, column 'title': the value is too long, e.g. 0.5 MB") == []
    assert abuse.message_problems("Unknown dataset 'x'. Pick one from the list.") == ["2 sentences"]
    assert "several lines" in abuse.message_problems("bad\nrequest")
    assert abuse.message_problems("x" * 500)[0].startswith("500 characters")
    assert "an internal error, not a message" in abuse.message_problems("Something went wrong (KeyError: 'a').")
    assert "a traceback" in abuse.message_problems('boom File "/srv/app.py", line 3, in f')
    assert abuse.message_problems("") == ["empty message"]


def test_path_leaks_allow_the_clients_own_path_only():
    assert abuse.path_leaks("adapter '/no/such/dir' is not a name", sent="/no/such/dir") == []
    assert abuse.path_leaks("use letters and/or digits, 1/2 of them") == []
    assert abuse.path_leaks("not found (looked in /srv/app/adapters)", sent="/etc") == ["/srv/app/adapters"]
    assert abuse.path_leaks("see /work/x", server_paths=["/work/x"]) == ["/work/x"]


def test_page_html_is_read_with_the_apps_own_renderer():
    from recdemo.app import render

    assert abuse.classify_html(render.notice_html("Steps: at most 2000.")) == ("error", "Steps: at most 2000.")
    assert abuse.classify_html(render.notice_html("Still running.", "info"))[0] == "info"
    kind, text = abuse.classify_html(render.upload_html({"name": "d", "users": 2, "items": 3, "interactions": 4}))
    assert kind == "ok" and "Added dataset" in text
    assert abuse.classify_html({"props": {"__type__": "update"}, "__type__": "update"}) == ("unchanged", "")


def test_judge_fails_each_broken_criterion():
    def verdict(answer, **kw):
        return abuse.judge(abuse.Row("x", "c", "r"), answer, **kw).problems

    fine = "51 results is above this server's limit of 50."
    assert verdict(abuse.Answer("error", fine, 0.1)) == []
    assert verdict(abuse.Answer("ok", "", 0.1)) == ["answered without an error"]
    assert verdict(abuse.Answer("ok", "", 0.1), want="any") == []
    assert verdict(abuse.Answer("ok", "", 5.0), want="ok", max_s=30) == []
    assert verdict(abuse.Answer("error", "No such dataset.", 0.1), want="ok") == ["no result (error)"]
    assert verdict(abuse.Answer("unchanged", "", 0.1))[0].startswith("no error reached the client")
    assert verdict(abuse.Answer("error", fine, 2.5)) == ["answer took 2.5 s (limit 2 s)"]
    assert verdict(abuse.Answer("timeout", "no answer in 30 s", 30.0), max_s=60)[0] == "no answer in 30 s"
    assert verdict(abuse.Answer("died", "ConnectError", 0.1))[0] == "the connection dropped"
    assert verdict(abuse.Answer("error", "missing: /srv/a/b", 0.1))[0].startswith("reveals server paths")
    assert verdict(abuse.Answer("skipped", "no endpoint"))[0] == "not run: no endpoint"


def test_peak_memory_is_reset_per_case_and_watched():
    pid = os.getpid()
    block = bytearray(96 * 2**20)  # touched: resident
    block[:: 4096] = b"x" * len(block[:: 4096])
    before = abuse.proc_kb(pid, "VmHWM")
    del block
    if not abuse.reset_peak(pid):
        pytest.skip("/proc/self/clear_refs is not writable here")
    after = abuse.proc_kb(pid, "VmHWM")
    assert after <= before - 64 * 2**10  # the 96 MB block no longer counts
    dog = abuse.Watchdog(abuse.Server("http://unused", pid), kill_kb=10**12, every_s=0.01)
    time.sleep(0.05)
    dog.stop()
    assert dog.peak_kb() >= abuse.proc_kb(pid, "VmRSS") * 0.9 and not dog.killed


# -- the case logic against the app, over HTTP, with a fake model --
def test_size_and_adapter_cases_pass_on_a_guarded_app(fake_app, rec, tmp_path):
    report = run(fake_app, tmp_path, "1,5")
    rows = rows_by_id(report)
    assert list(rows) == ["1a", "1b", "5a", "5b", "5c"]
    assert all(r["result"] == "PASS" and r["answer"] == "error" and r["up"] for r in rows.values()), rows
    assert "above this server's limit" in rows["1a"]["message"] and rows["1a"]["via"] == "/recommend"
    assert "never by a path" in rows["5a"]["message"]
    assert all(c["k"] <= 50 and c["n_candidates"] <= 200 for c in rec.calls)  # nothing oversized got through
    assert 0 < report["peak_rss_gb"] < 64 and report["failed"] == 0


def test_upload_cases_judge_the_apps_data_checks(fake_app, rec, tmp_path):
    rows = rows_by_id(run(fake_app, tmp_path, "2,3,7"))
    assert rows["2a"]["via"] == "/on_upload" and rows["2a"]["result"] == "PASS"
    assert "items.csv" in rows["2a"]["message"] and "line 2" in rows["2a"]["message"]
    assert rows["3"]["result"] == "PASS" and "line 242" in rows["3"]["message"]
    # case 7 depends on the app's minimum-data rule: whatever it is, an accepted upload is a FAIL
    assert (rows["7"]["answer"] == "ok") == ("answered without an error" in rows["7"]["problems"])


def test_finetune_case_counts_what_the_server_really_queued(fake_app, rec, tmp_path):
    server = fake_app[0]
    rows = rows_by_id(run(fake_app, tmp_path, "6"))
    assert rows["6a"]["result"] == "PASS" and rows["6a"]["answer"] == "error"  # 100,000 steps refused
    token_jobs = [j for j in server.ctx.jobs._jobs.values() if j.params["adapter"].startswith("abuse-q")]
    accepted = int(rows["6b"]["answer"].split()[0])
    assert accepted == len(token_jobs) >= 1
    allowed = server.ctx.cfg.limits.max_finetune_jobs + server.ctx.cfg.limits.max_queued_jobs
    assert (accepted > allowed) == any(p.startswith("accepted") for p in rows["6b"]["problems"])
    again = [j for j in server.ctx.jobs._jobs.values() if j.params["adapter"].startswith("abuse-again")]
    assert bool(again) == ("a second job was queued for the session" in rows["6c"]["problems"])


def test_session_case_compares_another_sessions_dataset_with_a_missing_one(fake_app, rec, tmp_path):
    rec.calls.clear()
    rows = rows_by_id(run(fake_app, tmp_path, "4"))
    assert set(rows) == {"4a", "4b", "4a2", "4c", "4d"}
    def norm(msg):
        return re.sub(r"abuse-(private|nosuch)-[0-9a-f]+", "NAME", msg)

    told_apart = (rows["4a"]["answer"] != rows["4b"]["answer"]
                  or norm(rows["4a"]["message"]) != norm(rows["4b"]["message"]))
    assert told_apart == ("B can tell A's dataset from a missing one" in rows["4a"]["problems"])
    # B asks from its own session (the page's event), where a session's uploads would be visible
    assert rows["4a"]["via"] == rows["4d"]["via"] == "/on_recommend" and rows["4a2"]["via"] == "/recommend"
    assert rows["4a"]["answer"] == rows["4a2"]["answer"] == "error" and rows["4a"]["result"] == "PASS"
    assert rows["4c"]["via"] == "/on_upload" and rows["4c"]["up"]
    assert rows["4d"]["result"] == "PASS" and rows["4d"]["answer"] == "ok"  # A still uses its own upload
    # only A's own request reached the model, with the history A typed into its page
    assert [c["history"] for c in rec.calls] == [["Song number 0", "Song number 3"]]


def test_uploads_fall_back_to_the_app_context_without_an_endpoint(fake_app, rec, tmp_path, monkeypatch):
    endpoint = abuse.Attack.endpoint
    monkeypatch.setattr(abuse.Attack, "endpoint", lambda self, word: None if word == "upload" else endpoint(self, word))
    row = run(fake_app, tmp_path, "3")["rows"][0]
    assert row["via"] == "AppContext.add_upload" and row["result"] == "PASS" and "line 242" in row["message"]
    outside = abuse.Server(fake_app[0].url, os.getpid())  # no AppContext to fall back to: said, and failed
    row = abuse.run_cases(outside, ["3"], tmp_path, fake_app[0].ctx.cfg.limits)["rows"][0]
    assert row["result"] == "FAIL" and row["problems"][0].startswith("not run: the app has no upload endpoint")


@pytest.fixture
def probe_case(monkeypatch):
    """A case that sends one valid request: its answer is shaped by the fake, not by the app's checks."""
    def case_probe(att):
        """probe: one valid /recommend."""
        a = att.recommend(att.client(), ["Heat (1995)"])
        return [att.judge(abuse.Row("p", "probe", "/recommend"), a)]

    monkeypatch.setitem(abuse.CASES, "9", case_probe)
    monkeypatch.setattr(abuse, "ORDER", [*abuse.ORDER, "9"])


@pytest.mark.parametrize("fail, delay, kw, problem", [
    ("Unknown adapter. Pick another one.", 0, {}, "message: 2 sentences"),
    ("adapter 'x' not found (looked in /srv/app/adapters).", 0, {}, "reveals server paths: /srv/app/adapters"),
    ("No such adapter.", 0.4, {"max_answer_s": 0.2}, "answer took"),
    ("No such adapter.", 1.5, {"timeout": 0.5}, "no answer in 0.5 s"),
    (None, 0, {}, "answered without an error"),
])
def test_answers_are_judged_end_to_end(fake_app, rec, tmp_path, probe_case, fail, delay, kw, problem):
    rec.fail_with = ValueError(fail) if fail else None
    rec.delay = delay
    report = run(fake_app, tmp_path, "9", **kw)
    row = report["rows"][0]
    assert row["result"] == "FAIL" and row["up"]
    assert any(p.startswith(problem) for p in row["problems"]), row["problems"]
    assert problem in abuse.markdown(report)  # the table says why


def test_a_dead_server_fails_the_case(fake_app, rec, tmp_path, monkeypatch):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    server = abuse.Server(fake_app[0].url, victim.pid)  # answers over HTTP, "dies" when the victim does
    server.alive = lambda: victim.poll() is None

    def case_kill(att):
        """kill: the process dies during the case."""
        victim.kill()
        victim.wait(10)
        return [att.judge(abuse.Row("k", "kill", "-"), abuse.Answer("error", "Gone.", 0.1, "/recommend"))]

    monkeypatch.setitem(abuse.CASES, "9", case_kill)
    monkeypatch.setattr(abuse, "ORDER", ["9"])
    report = abuse.run_cases(server, ["9"], tmp_path, fake_app[0].ctx.cfg.limits)
    row = report["rows"][0]
    assert row["up"] is False and row["result"] == "FAIL"
    assert "the server is down after this request" in row["problems"]
    # the next case does not run against a dead server it cannot restart
    again = abuse.run_cases(server, ["9"], tmp_path, fake_app[0].ctx.cfg.limits)["rows"][0]
    assert again["problems"] == ["the server was down before the case and could not be restarted"]


def test_main_writes_results_only_with_out(fake_app, rec, tmp_path, monkeypatch):
    url, rss = fake_app[0].url, f"{rss_limit_gb():.2f}"
    monkeypatch.chdir(tmp_path)
    shipped = ROOT / "bench" / "results" / "abuse.json"
    stamp = shipped.stat().st_mtime if shipped.exists() else None
    assert abuse.main(["--url", url, "--pid", str(os.getpid()), "--max-rss-gb", rss, "--cases", "1"]) == 0
    assert list(tmp_path.iterdir()) == [] and (shipped.stat().st_mtime if shipped.exists() else None) == stamp
    out = tmp_path / "results"
    assert abuse.main(["--url", url, "--pid", str(os.getpid()), "--max-rss-gb", rss, "--cases", "1",
                      "--out", str(out)]) == 0
    report = json.loads((out / "abuse.json").read_text())
    assert report["command"].endswith("--cases 1 --out " + str(out)) and "load average" in report["uptime"]
    assert [r["id"] for r in report["rows"]] == ["1a", "1b"] and report["server"]["mode"] == "external"
    md = (out / "abuse.md").read_text()
    assert "| 1a |" in md and "| 1b |" in md and report["uptime"] in md


# -- the real app --
@pytest.mark.integration
def test_real_app_refuses_oversized_requests_quickly(tmp_path):
    """bench/abuse.py as the lead runs it (its own `python app.py`, the embedded model), case 1 only."""
    from conftest import real_data_root
    from recdemo.config import Config

    real_data_root()
    shipped = sorted(Path(Config.from_env().retrieval.checkpoint_dir).glob("sasrec-movielens-small.*"))
    if len(shipped) != 2:
        pytest.fail("needs the shipped SASRec checkpoint for movielens-small (python -m recdemo train "
                    "--dataset movielens-small); training it here would take minutes")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "abuse.py"), "--cases", "1", "--no-warmup-wait",
                           "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "abuse.json").read_text())
    assert report["server"]["mode"] == "subprocess" and report["server"]["restarts"] == 0
    rows = rows_by_id(report)
    assert set(rows) == {"1a", "1b"}
    for r in rows.values():
        assert r["result"] == "PASS" and r["answer"] == "error" and r["seconds"] < 2 and r["up"]
        assert "limit" in r["message"]
    assert 0.2 < report["peak_rss_gb"] < 4  # the model is resident, and nothing grew with k
