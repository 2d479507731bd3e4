"""The launched app, driven over HTTP with gradio_client (fake Recommender: no model needed)."""
import socket
import time

import pytest

from _app_fakes import fake_context


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from recdemo.app.main import launch

    ctx = fake_context(tmp_path_factory.mktemp("app"))
    cfg = ctx.cfg.set("app", "port", free_port())
    demo, ctx, url = launch(cfg, ctx=ctx, block=False, warmup=False, quiet=True)
    yield url, ctx
    demo.close()
    ctx.close()


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


def test_recommend_api_returns_profile_candidates_and_explained_top10(client):
    res = client.predict(["Toy Story (1995)", "Heat (1995)", "Jumanji (1995)"], "movielens-small", "score",
                         api_name="/recommend")
    assert len(res["results"]) == 10
    assert all(r["rationale"] and r["evidence"] for r in res["results"])
    assert res["profile"]["summary"] and res["profile"]["keywords"]
    assert len(res["candidates"]) == 50
    assert res["ranker"] == "score" and res["timings"]["total"] > 0


def test_recommend_api_optional_arguments(client, app):
    res = client.predict(["Heat (1995)"], "movielens-small", "palr", "none", 20, 5, api_name="/recommend")
    assert len(res["results"]) == 5 and len(res["candidates"]) == 20
    assert app[1].recs["movielens-small"].calls[-1]["adapter"] is None


def test_recommend_api_errors_are_clean_messages(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Did you mean"):
        client.predict(["Toy Storee (1995)"], "movielens-small", "score", api_name="/recommend")
    with pytest.raises(AppError, match="Pick at least one item"):
        client.predict([], "movielens-small", "score", api_name="/recommend")


def test_recommend_stream_api_yields_the_stages_in_order(client, app):
    """Issue 17: the same partial states as the page, in order; the last is /recommend's answer."""
    history = ["Toy Story (1995)", "Heat (1995)"]
    job = client.submit(history, "movielens-small", "score", api_name="/recommend_stream")
    job.result(timeout=60)
    states = job.outputs()
    assert [s["stage"] for s in states] == ["retrieval", "rerank", "explain", "explain", "profile", "done"]
    assert states[0]["profile"] is None and [r["index"] for r in states[0]["results"]] == [
        c["index"] for c in states[0]["candidates"][:10]]
    explained = [sum(bool(r["rationale"]) for r in s["results"]) for s in states]
    assert explained[:2] == [0, 0] and 0 < explained[2] < explained[3] == explained[-1] == 10  # as they come
    assert states[3]["profile"] is None and states[4]["profile"] is not None
    assert states[-1] == client.predict(history, "movielens-small", "score", api_name="/recommend")


def test_steering_through_the_api(client, app):
    edit = {"keywords": ["comedy", "heists"], "summary": "Likes heists."}
    res = client.predict(["Heat (1995)"], "movielens-small", "score", "auto", 50, 10, edit, [0, 1],
                         api_name="/recommend")
    assert [k["text"] for k in res["profile"]["keywords"]] == ["comedy", "heists"]
    assert res["profile"]["summary"] == "Likes heists." and {0, 1}.isdisjoint(r["index"] for r in res["results"])
    call = app[1].recs["movielens-small"].calls[-1]
    assert call["profile_edit"] == edit and call["exclude"] == [0, 1]


def test_status_api(client):
    st = client.predict(api_name="/status")
    assert st["model_ready"] is True and "uptime_s" in st


def test_api_is_documented(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert {"/recommend", "/recommend_stream"} <= set(info["named_endpoints"])


HISTORY = ["Toy Story (1995)", "Heat (1995)", "Jumanji (1995)"]


@pytest.mark.parametrize("args, expected", [
    ((HISTORY, "movielens-small", "score", "auto", 100000, 100000), "above this server's limit of 200"),
    ((HISTORY, "movielens-small", "score", "auto", 50, 100000), "above this server's limit of 50"),
    ((HISTORY, "movielens-small", "score", "/etc", 50, 10), "never by a path"),
    ((HISTORY, "movielens-small", "score", "/no/such/dir", 50, 10), "never by a path"),
    ((HISTORY, "movielens-small", "score", "../x", 50, 10), "never by a path"),
    ((["x" * 100_000], "movielens-small", "score", "auto", 50, 10), "titles have at most"),
    ((HISTORY * 100, "movielens-small", "score", "auto", 50, 10), "history items is above"),
    ((HISTORY, "shop", "score", "auto", 50, 10), "Unknown dataset 'shop'"),
    ((HISTORY, "../../etc", "score", "auto", 50, 10), "Unknown dataset"),
])
def test_abusive_requests_get_one_sentence_at_once(client, app, tmp_path, args, expected):
    """Issue 18's requests: each answered with a one-sentence error in well under 2 s that names
    no server path, and none reaches the model. "shop" is another (browser) session's upload."""
    from gradio_client.exceptions import AppError

    ctx = app[1]
    if not ctx.uploads.names("someone-else"):
        (tmp_path / "interactions.csv").write_text(
            "user_id,item_id,timestamp\n" + "".join(f"u{u},i{(u + t) % 5},{t}\n" for u in range(3) for t in range(3)))
        (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"i{i},T{i}\n" for i in range(5)))
        ctx.add_upload(str(tmp_path / "interactions.csv"), str(tmp_path / "items.csv"), "shop", "someone-else")
    calls = sum(len(r.calls) for r in ctx.recs.values())
    t0 = time.perf_counter()
    with pytest.raises(AppError) as e:
        client.predict(*args, api_name="/recommend")
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    assert expected in msg and msg.count(". ") == 0 and msg.endswith(".")
    assert "/tmp" not in msg and str(ctx.cfg.llm.adapter_dir) not in msg
    assert sum(len(r.calls) for r in ctx.recs.values()) == calls


def test_a_second_start_in_a_session_is_refused_with_an_error_the_client_sees(app):
    """The page's Start while the session's fine-tune runs: a clear error (not a toast only, which
    an API client never sees), the first job tracked as before, no second job."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, ctx = app
    session = Client(url, verbose=False)  # one browser session: its job id is a State on the server
    args = ("movielens-small", ["recommend"], 300, 8, 2e-4)
    first = session.predict(*args, "ft-first", 2, api_name="/on_start")
    jobs = [s["id"] for s in ctx.jobs.active()]
    assert len(jobs) == 1, first
    try:
        with pytest.raises(AppError, match="still running"):
            session.predict(*args, "ft-second", 2, api_name="/on_start")
        assert [s["id"] for s in ctx.jobs.active()] == jobs
    finally:
        for jid in jobs:
            ctx.jobs.cancel(jid)
        for jid in jobs:
            ctx.jobs.wait(jid, timeout=10)


def test_two_recommend_calls_run_at_the_same_time(tmp_path):
    """Two /recommend calls overlap in the server (else neither would pass the barrier, which
    needs both inside recommend_stages at once): the app does not queue whole requests."""
    import threading

    from gradio_client import Client

    from _app_fakes import FakeRecommender
    from recdemo.app.main import launch

    class Meeting(FakeRecommender):
        def __init__(self):
            super().__init__()
            self.barrier = threading.Barrier(2, timeout=30)

        def recommend_stages(self, history, **kw):
            self.barrier.wait()  # BrokenBarrierError after 30 s alone
            yield from super().recommend_stages(history, **kw)

    rec = Meeting()
    from recdemo.config import Config

    ctx = fake_context(tmp_path, cfg=Config().set("app", "concurrent_requests", 2), recommender=rec)
    cfg = ctx.cfg.set("app", "port", free_port())
    demo, ctx, url = launch(cfg, ctx=ctx, block=False, warmup=False, quiet=True)
    try:
        out, errors = [], []

        def call():
            try:
                out.append(Client(url, verbose=False).predict([rec.titles[0]], "movielens-small",
                                                              api_name="/recommend"))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert errors == [] and len(out) == 2 and all(o["results"] for o in out)
        assert not rec.barrier.broken
    finally:
        demo.close()
        ctx.close()
