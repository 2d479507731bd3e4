"""Per-session data (issue 18, defect 5): an upload, and the adapters fine-tuned on it, belong to
the browser session that made them; other sessions and the API can neither use nor detect them.
Also the upload quota and what ending a session removes. AppContext with the fakes."""
import threading
import time

import pytest

from _app_fakes import FakeRecommender, FakeService, fake_context, fake_finetune
from recdemo.app import events
from recdemo.app.sessions import private_key
from recdemo.config import Config

INTER = "user_id,item_id,timestamp\n" + "".join(f"u{u},i{(u + t) % 6},{t}\n" for u in range(4) for t in range(4))
ITEMS = "item_id,title\n" + "".join(f"i{i},Item {i}\n" for i in range(6))


def pair(tmp_path, inter=INTER, items=ITEMS):
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    (d / "interactions.csv").write_text(inter)
    (d / "items.csv").write_text(items)
    return str(d / "interactions.csv"), str(d / "items.csv")


@pytest.fixture
def ctx(tmp_path):
    c = fake_context(tmp_path)
    yield c
    c.close()


def unknown_message(ctx, name, session):
    with pytest.raises(ValueError) as e:
        events.run_recommendation(ctx, ["Item 1"], name, "score", session=session)
    return str(e.value)


def test_an_upload_is_invisible_to_other_sessions_and_to_the_api(ctx, tmp_path):
    ok, html = events.upload_dataset(ctx, *pair(tmp_path), "shop", session="s1")
    assert ok, html
    assert ("Uploaded · shop", "shop") in ctx.datasets("s1")
    assert "shop" not in dict(ctx.datasets("s2")).values() and "shop" not in dict(ctx.datasets()).values()
    assert events.search(ctx, "shop", "Heat", session="s1")[0]  # the owner uses it
    # Another session, and the API (no session), get the answer a name nobody uploaded gets.
    for session in ("s2", None):
        assert unknown_message(ctx, "shop", session) == unknown_message(ctx, "nobody", session).replace(
            "'nobody'", "'shop'")
        assert events.search(ctx, "shop", "Heat", session=session)[0] == []
        assert events.random_user(ctx, "shop", session=session)[0] == []
        assert events.start_finetune(ctx, "shop", ["genrec"], 5, 8, 2e-4, "x", session=session)[0] is None
    # The key it is kept under cannot be named either.
    key = private_key("shop", "s1")
    assert "Unknown dataset" in unknown_message(ctx, key, "s2")
    assert "Unknown dataset" in unknown_message(ctx, key, "s1")


def test_the_same_name_in_two_sessions_is_two_datasets_and_taken_names_are_only_your_own(ctx, tmp_path):
    assert events.upload_dataset(ctx, *pair(tmp_path), "shop", session="s1")[0]
    ok, html = events.upload_dataset(ctx, *pair(tmp_path), "shop", session="s2")
    assert ok, html  # "already exists" would tell s2 that someone uploaded "shop"
    assert ctx.dataset_key("shop", "s1") != ctx.dataset_key("shop", "s2")
    assert ctx.recommender("shop", "s1") is not ctx.recommender("shop", "s2")
    ok, html = events.upload_dataset(ctx, *pair(tmp_path), "shop", session="s1")
    assert not ok and "You already uploaded a dataset named" in html
    ok, html = events.upload_dataset(ctx, *pair(tmp_path), "movielens-small", session="s3")
    assert not ok and "built-in dataset" in html


def test_uploads_need_a_session_and_each_session_has_a_quota(tmp_path):
    c = fake_context(tmp_path, cfg=Config().set("limits", "max_uploads_per_session", 2))
    try:
        ok, html = events.upload_dataset(c, *pair(tmp_path), "a", session=None)
        assert not ok and "browser session" in html
        assert events.upload_dataset(c, *pair(tmp_path), "a", session="s1")[0]
        assert events.upload_dataset(c, *pair(tmp_path), "b", session="s1")[0]
        ok, html = events.upload_dataset(c, *pair(tmp_path), "c", session="s1")
        assert not ok and "A session may keep 2 uploaded datasets" in html
        assert c.uploads.names("s1") == ["a", "b"]
        assert events.upload_dataset(c, *pair(tmp_path), "c", session="s2")[0]  # a quota per session
    finally:
        c.close()


def test_an_upload_nothing_can_be_trained_on_is_refused_at_upload(ctx, tmp_path):
    one_each = "user_id,item_id,timestamp\n" + "".join(f"u{u},i{u % 6},1\n" for u in range(50))
    ok, html = events.upload_dataset(ctx, *pair(tmp_path, inter=one_each), "thin", session="s1")
    assert not ok and "only 0 of 50 users have 3 or more interactions" in html
    assert ctx.uploads.names("s1") == [] and not any(ctx.uploads.root.rglob("thin"))


def test_an_upload_over_the_row_limit_is_refused(tmp_path):
    c = fake_context(tmp_path, cfg=Config().set("limits", "max_upload_rows", 10))
    try:
        ok, html = events.upload_dataset(c, *pair(tmp_path), "big", session="s1")
        assert not ok and "more than 10 rows" in html and "interactions.csv" in html
    finally:
        c.close()


def test_an_adapter_trained_on_an_upload_is_its_sessions_own(tmp_path):
    service = FakeService(adapters=())
    c = fake_context(tmp_path, service=service)
    try:
        assert events.upload_dataset(c, *pair(tmp_path), "shop", session="s1")[0]
        jid, html = events.start_finetune(c, "shop", ["recommend"], 3, 8, 2e-4, "mine", session="s1")
        assert jid is not None, html
        assert c.jobs.wait(jid, timeout=10)["status"] == "done"
        assert events.poll_finetune(c, jid)["adapter"] == "mine"  # its name, not the key
        key = private_key("mine", "s1")
        assert (c.uploads.folder_for("s1") / "adapters" / key).is_dir()  # not in the shared adapter folder
        assert not (tmp_path / "adapters" / "mine").exists()
        assert ("mine", "mine") in events.adapter_choices(c, "s1")
        for session in ("s2", None):
            assert "mine" not in dict(events.adapter_choices(c, session)).values()
            assert all("@" not in v for v in dict(events.adapter_choices(c, session)).values())
            assert events.next_adapter_name(c, "mine", session) == "mine-ft1"
        # The owner's requests use it by its key; another session's "mine" is just a name the
        # service will not find (as for a name nobody trained); the key itself cannot be named.
        assert c.adapter_arg("mine", "s1") == key
        assert c.adapter_arg("mine", "s2") == "mine"
        with pytest.raises(Exception, match="never by a path"):
            c.adapter_arg(key, "s2")
        # s2 may train an adapter called "mine" on a built-in dataset: the name is not "taken".
        jid2, html = events.start_finetune(c, "movielens-small", ["recommend"], 2, 8, 2e-4, "mine", session="s2")
        assert jid2 is not None, html
    finally:
        c.close()


def test_one_running_finetune_per_session_even_without_its_job_id(tmp_path):
    service = FakeService()
    c = fake_context(tmp_path, service=service, finetune_runner=fake_finetune(service, step_seconds=0.05))
    try:
        first, _ = events.start_finetune(c, "movielens-small", ["recommend"], 200, 8, 2e-4, "a", session="s1")
        again, html = events.start_finetune(c, "movielens-small", ["recommend"], 5, 8, 2e-4, "b", session="s1")
        assert first and again is None and "still running" in html  # e.g. after the page's state was lost
        deadline = time.time() + 5
        while c.jobs.position(first) != 0:
            assert time.time() < deadline
            time.sleep(0.01)
        other, html = events.start_finetune(c, "movielens-small", ["recommend"], 5, 8, 2e-4, "c", session="s2")
        assert other, html
        assert c.jobs.position(other) == 1  # queued behind s1's: max_finetune_jobs = 1 runs at once
    finally:
        c.close()


def test_ending_a_session_cancels_its_work_and_removes_its_files(tmp_path):
    service = FakeService()
    c = fake_context(tmp_path, service=service, finetune_runner=fake_finetune(service, step_seconds=0.05))
    try:
        assert events.upload_dataset(c, *pair(tmp_path), "shop", session="s1")[0]
        assert events.upload_dataset(c, *pair(tmp_path), "kept", session="s2")[0]
        jid, _ = events.start_finetune(c, "shop", ["recommend"], 500, 8, 2e-4, "mine", session="s1")
        folder = c.uploads.folder_for("s1")
        assert folder.is_dir()
        events.end_session(c, "s1")
        assert c.uploads.names("s1") == [] and "Unknown dataset" in unknown_message(c, "shop", "s1")
        snap = c.jobs.wait(jid, timeout=10)
        assert snap["status"] == "cancelled"
        c.clean()  # the timer's pass removes the folder once its job has stopped
        assert not folder.exists()
        assert c.uploads.names("s2") == ["kept"] and c.uploads.folder_for("s2").is_dir()
    finally:
        c.close()


def test_a_job_that_finds_its_ended_sessions_upload_gone_ends_cancelled_not_failed(tmp_path):
    """The race of ending a session while its job starts: the job looks its dataset up just after
    the upload was forgotten; it must already see its cancel."""
    c = fake_context(tmp_path)
    go = threading.Event()
    real_recommender, real_end = c._recommender, c.uploads.end

    def recommender(key):  # the job's first step waits until the session's uploads are forgotten
        go.wait(10)
        return real_recommender(key)

    def end(session):
        out = real_end(session)
        go.set()
        c.jobs.wait(jid, timeout=5)  # the job looks up its dataset now, before end_session goes on
        return out

    c._recommender, c.uploads.end = recommender, end
    try:
        assert events.upload_dataset(c, *pair(tmp_path), "shop", session="s1")[0]
        jid, html = events.start_finetune(c, "shop", ["recommend"], 50, 8, 2e-4, "mine", session="s1")
        assert jid, html
        deadline = time.time() + 5
        while c.jobs.snapshot(jid)["status"] != "running":
            assert time.time() < deadline
            time.sleep(0.01)
        events.end_session(c, "s1")
        snap = c.jobs.wait(jid, timeout=10)
        assert snap["status"] == "cancelled", snap
    finally:
        go.set()
        c.close()


class TrainingRecommender(FakeRecommender):
    """Its stack trains SASRec epoch by epoch until cancelled (like train_sasrec with cancel)."""

    def __init__(self, name):
        super().__init__(name)
        self.stack = self
        self.cancelled = threading.Event()

    def build_retriever(self, cancel=None, on_epoch=None):
        from recdemo.retrieval.train import TrainingCancelled

        for epoch in range(1, 1000):
            if cancel.wait(0.02):
                self.cancelled.set()
                raise TrainingCancelled("SASRec training was cancelled")
            on_epoch(epoch, 1000, {})


def test_sasrec_training_for_an_upload_shows_progress_and_stops_when_the_session_ends(tmp_path):
    made = {}
    c = fake_context(tmp_path)
    c._factory = lambda key, folder: made.setdefault(key, TrainingRecommender(key))
    try:
        assert events.upload_dataset(c, *pair(tmp_path), "shop", session="s1")[0]
        busy = c.ensure_ready("shop", wait=0.3, session="s1")
        assert busy and "Training SASRec for shop: epoch" in busy and "@" not in busy
        st = c.status("shop", "s1")
        assert st["state"] == "loading" and 0 < st["progress"] < 1
        from recdemo.app import render
        assert 'class="rd-bar-fill"' in render.status_html(st)  # the header's progress bar
        assert "rd-bar" not in render.status_html(c.status("movielens-small"))
        assert c.status("shop", "s2").get("progress") is None  # not another session's business
        events.end_session(c, "s1")
        rec = made[private_key("shop", "s1")]
        assert rec.cancelled.wait(5)
    finally:
        c.close()


def test_cleanup_pass_removes_stale_work_and_expired_uploads(tmp_path):
    import os

    cfg = Config().set("app", "upload_hours", 1.0).set("app", "stale_hours", 1.0)
    cfg = cfg.set("retrieval", "cache_dir", str(tmp_path / "sasrec-cache"))
    c = fake_context(tmp_path, cfg=cfg)
    try:
        adapters = tmp_path / "adapters"
        (adapters / "done").mkdir(parents=True)
        (adapters / "done" / "adapter_config.json").write_text("{}")
        partial = adapters / "crashed.partial"
        partial.mkdir()
        (tmp_path / "sasrec-cache").mkdir()
        tmp = tmp_path / "sasrec-cache" / ".abc.pt.tmp-123"
        tmp.write_text("x")
        old = time.time() - 2 * 3600
        for p in (partial, tmp, adapters / "done", adapters / "done" / "adapter_config.json"):
            os.utime(p, (old, old))
        assert events.upload_dataset(c, *pair(tmp_path), "shop", session="s1")[0]
        out = c.clean(now=time.time() + 2 * 3600)  # two hours later: the upload has expired too
        assert sorted(out["work"]) == sorted([partial, tmp])
        assert (adapters / "done" / "adapter_config.json").exists()
        assert c.uploads.names("s1") == [] and not c.uploads.folder_for("s1").exists()
    finally:
        c.close()
