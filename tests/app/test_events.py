"""The app's event functions, called directly with a fake Recommender (tests/_app_fakes.py)."""
import pytest

from _app_fakes import FakeRecommender, fake_context, fake_finetune, FakeService
from recdemo.app import events, render


@pytest.fixture
def ctx(tmp_path):
    c = fake_context(tmp_path)
    yield c
    c.close()


# -- picker --
def test_search_is_typo_tolerant_and_short_queries_are_ignored(ctx):
    titles, msg = events.search(ctx, "movielens-small", "toy strory")
    assert titles[0] == "Toy Story (1995)" and msg == ""
    assert events.search(ctx, "movielens-small", "t") == ([], "")


def test_search_unknown_dataset_gives_message_not_exception(ctx):
    titles, msg = events.search(ctx, "no-such-data", "toy")
    assert titles == [] and "Unknown dataset" in msg


def test_missing_builtin_dataset_says_how_to_download(tmp_path):
    """Real Recommender factory (no fake): the data folder is empty, so loading fails early."""
    from recdemo.app.context import AppContext
    from recdemo.config import Config

    c = AppContext(Config().set("data", "root", str(tmp_path / "nodata")), upload_root=str(tmp_path / "up"))
    with pytest.raises(ValueError, match="data download amazon-beauty"):
        c.ensure_ready("amazon-beauty", wait=120)  # the first time includes importing the pipeline
    assert c.status("amazon-beauty")["state"] == "error"
    titles, msg = events.search(c, "amazon-beauty", "lipstick")  # retried, fails fast
    assert titles == [] and "python -m recdemo data download amazon-beauty" in msg
    out = events.recommend(c, ["Toy Story (1995)"], "movielens-small", "score", "auto", 50, 10)
    assert not out["ok"] and "data download movielens-small" in out["message"]
    c.close()


def test_dataset_still_being_prepared_gives_message_not_a_long_wait(tmp_path):
    import threading

    gate = threading.Event()

    class SlowIndex(FakeRecommender):
        @property
        def text_index(self):  # like building embeddings for a new catalog: slow the first time
            gate.wait(10)
            return None

    c = fake_context(tmp_path, recommender=SlowIndex("amazon-beauty"))
    titles, msg = events.search(c, "amazon-beauty", "heat")
    assert titles == [] and "still being prepared" in msg and "search index" in msg
    out = events.recommend(c, ["Heat (1995)"], "amazon-beauty", "score", "auto", 50, 10)
    assert not out["ok"] and out["kind"] == "info" and "still being prepared" in out["message"]
    assert c.status("amazon-beauty")["state"] == "loading"
    gate.set()
    assert c.ensure_ready("amazon-beauty", wait=5) is None
    assert events.search(c, "amazon-beauty", "heat")[0][0] == "Heat (1995)"
    assert c.status("amazon-beauty")["state"] == "idle"  # no warm-up in this test; the dataset is ready
    c.close()


def test_add_move_remove_keep_order():
    h, _ = events.add_item([], "A")
    h, _ = events.add_item(h, "B")
    h, _ = events.add_item(h, "C")
    h2, msg = events.add_item(h, "B")
    assert h2 == ["A", "B", "C"] and "already" in msg
    h, pos = events.move_item(h, 2, -1)
    assert (h, pos) == (["A", "C", "B"], 1)
    h, pos = events.move_item(h, 0, -1)  # already first: stays
    assert (h, pos) == (["A", "C", "B"], 0)
    assert events.move_item(h, None, 1) == (["A", "C", "B"], None)
    h, pos = events.remove_item(h, 2)
    assert (h, pos) == (["A", "C"], 1)
    assert events.history_choices(h) == [("1. A", 0), ("2. C", 1)]


def test_history_is_capped():
    h = [f"T{i}" for i in range(events.MAX_HISTORY_ITEMS)]
    h2, msg = events.add_item(h, "one more")
    assert h2 == h and "at most" in msg


def test_random_user_and_personas(ctx):
    hist, msg = events.random_user(ctx, "movielens-small", seed=1)
    assert len(hist) == 6 and msg == ""
    names = events.personas(ctx, "movielens-small")
    assert "Comedy fan" in names
    assert events.persona_history(ctx, "movielens-small", "Comedy fan") == names["Comedy fan"]
    assert events.persona_history(ctx, "movielens-small", None) is None


# -- recommend --
def test_recommend_renders_profile_cards_table_and_timings(ctx):
    out = events.recommend(ctx, ["Toy Story (1995)", "Heat (1995)", "Jumanji (1995)"], "movielens-small",
                           "palr", "auto", 50, 10)
    assert out["ok"], out["message"]
    assert out["cards_html"].count('class="rd-card"') == 10
    assert "rd-kw grounded" in out["profile_html"] and "rd-kw ungrounded" in out["profile_html"]
    assert "from: Toy Story (1995)" in out["profile_html"]
    assert out["candidates_html"].count("<tr") == 51  # header + 50 candidates
    assert '<span class="rd-llm">#1</span>' in out["candidates_html"]
    assert "▲ up" in out["cards_html"] and ">new<" in out["cards_html"]
    assert "total 0.61 s" in out["meta_html"] and "fake-llm" in out["meta_html"]
    assert out["prompt"].startswith("### Interaction History")
    call = ctx.recs["movielens-small"].calls[-1]
    assert call == dict(history=["Toy Story (1995)", "Heat (1995)", "Jumanji (1995)"], ranker="palr",
                        n_candidates=50, k=10, adapter="auto")


def test_the_page_streams_each_stage_as_it_comes(ctx):
    """score: SASRec's list, the LLM's order, the explanations as they come, then the profile."""
    pages = list(events.recommend_stream(ctx, ["Toy Story (1995)", "Heat (1995)"], "movielens-small", "score",
                                         "auto", 50, 10))
    assert [p["stage"] for p in pages] == ["retrieval", "rerank", "explain", "explain", "profile", "done"]
    first = pages[0]
    assert "Provisional" in first["cards_html"] and first["cards_html"].count("rd-card rd-provisional") == 10
    assert "Writing your taste profile" in first["profile_html"] and "ranking" in first["meta_html"]
    assert first["candidates_html"].count("<tr") == 51  # the candidate table comes with the first state
    assert "Provisional" not in pages[1]["cards_html"] and pages[1]["cards_html"].count("explaining…") == 10
    assert "Writing your taste profile" in pages[1]["profile_html"] and "ranking" not in pages[1]["meta_html"]
    assert pages[2]["cards_html"].count("explaining…") == 5 and "explaining" in pages[2]["meta_html"]
    assert "explaining…" not in pages[3]["cards_html"] and "writing the profile" in pages[3]["meta_html"]
    assert "rd-kw grounded" in pages[4]["profile_html"] and "Provisional" not in pages[4]["cards_html"]
    final = pages[-1]
    assert "explaining…" not in final["cards_html"] and "rd-working" not in final["meta_html"]
    assert final["cards_html"].count('class="rd-dismiss"') == 10 and "rd-dismiss" not in pages[3]["cards_html"]
    assert final == events.recommend(ctx, ["Toy Story (1995)", "Heat (1995)"], "movielens-small", "score",
                                     "auto", 50, 10)


def test_a_ranker_that_reads_the_profile_streams_it_before_the_llms_order(ctx):
    pages = list(events.recommend_stream(ctx, ["Toy Story (1995)", "Heat (1995)"], "movielens-small", "palr",
                                         "auto", 50, 10))
    assert [p["stage"] for p in pages] == ["retrieval", "profile", "rerank", "explain", "done"]
    assert "rd-kw grounded" in pages[1]["profile_html"] and "Provisional" in pages[1]["cards_html"]
    assert "Provisional" not in pages[2]["cards_html"] and pages[2]["cards_html"].count("explaining…") == 10


def test_a_failure_mid_stream_ends_it_with_a_message(tmp_path):
    class FailsAfterRetrieval(FakeRecommender):
        def recommend_stages(self, history, **kw):
            stages = super().recommend_stages(history, **kw)
            yield next(stages)
            raise RuntimeError("model crashed")

    c = fake_context(tmp_path, recommender=FailsAfterRetrieval())
    pages = list(events.recommend_stream(c, ["Heat (1995)"], "movielens-small", "score", "auto", 50, 10))
    assert [p["ok"] for p in pages] == [True, False] and "model crashed" in pages[-1]["message"]
    c.close()


def test_steering_reaches_the_recommender_and_the_cards_say_what_moved(ctx):
    history = ["Toy Story (1995)", "Heat (1995)"]
    before = events.recommend(ctx, history, "movielens-small", "score", "auto", 50, 10)
    assert "profile_edit" not in ctx.recs["movielens-small"].calls[-1]  # a plain request is unchanged
    baseline = [{"index": r["index"], "rank": r["rank"]} for r in before["data"]["results"]]
    baseline[0], baseline[1] = {**baseline[0], "rank": 2}, {**baseline[1], "rank": 1}  # as if the edit swapped them
    gone = before["data"]["results"][2]["index"]
    edit = {"keywords": ["comedy", "heists"], "summary": "Likes heists."}
    out = events.recommend(ctx, history, "movielens-small", "score", "auto", 50, 10, profile_edit=edit,
                           exclude=[gone], baseline=baseline)
    call = ctx.recs["movielens-small"].calls[-1]
    assert call["profile_edit"] == edit and call["exclude"] == [gone]
    labels = [render.edit_move(r, baseline) for r in out["data"]["results"]]
    assert ("new with your edit", "new") in labels  # the card that refilled the dismissed one's place
    assert any(m and m[1] == "down" for m in labels) and labels.count(None) >= 5
    assert all(m[0] in out["cards_html"] for m in labels if m)
    assert out["cards_html"].count("with your edit") == sum(m is not None for m in labels)
    assert "added by you" in out["profile_html"]
    choices, chosen, summary = events.profile_editor(before["data"])
    assert (choices, chosen, summary) == (["comedy", "space opera"], ["comedy"],
                                          "Enjoys comedy and the occasional drama.")


def test_dismissed_accumulates_distinct_items():
    assert events.dismissed(None, "7") == [7]
    assert events.dismissed([7], 7) == [7] and events.dismissed([7], 3) == [7, 3]
    assert events.dismissed([7], None) == [7] and events.dismissed([7], "x") == [7]


def test_adapter_none_means_base_model(ctx):
    events.recommend(ctx, ["Heat (1995)"], "movielens-small", "score", "none", 20, 5)
    assert ctx.recs["movielens-small"].calls[-1]["adapter"] is None


@pytest.mark.parametrize("history,needle", [([], "Pick at least one item"),
                                            (["Toy Storee (1995)"], "Did you mean")])
def test_recommend_bad_input_is_a_friendly_message(ctx, history, needle):
    out = events.recommend(ctx, history, "movielens-small", "score", "auto", 50, 10)
    assert not out["ok"] and needle in out["message"] and "Traceback" not in out["message"]


def test_recommend_unexpected_exception_is_a_message(tmp_path):
    c = fake_context(tmp_path, recommender=FakeRecommender(fail_with=RuntimeError("boom")))
    out = events.recommend(c, ["Heat (1995)"], "movielens-small", "score", "auto", 50, 10)
    assert not out["ok"] and "RuntimeError: boom" in out["message"] and "server log" in out["message"]


def test_recommend_while_model_loading_says_so(tmp_path):
    c = fake_context(tmp_path, ready=False)
    c._warm_thread = object()  # pretend a warm-up is running
    out = events.recommend(c, ["Heat (1995)"], "movielens-small", "score", "auto", 50, 10)
    assert not out["ok"] and "still loading" in out["message"]


def test_bad_ranker_and_k_rejected(ctx):
    assert "Unknown ranker" in events.recommend(ctx, ["Heat (1995)"], "movielens-small", "bm25", "auto",
                                                50, 10)["message"]
    assert "number of results" in events.recommend(ctx, ["Heat (1995)"], "movielens-small", "score", "auto",
                                                   5, 10)["message"]


def test_api_result_is_plain_json(ctx):
    data = events.run_recommendation(ctx, ["Heat (1995)"], "movielens-small", "score")
    res = events.api_result(data)
    assert len(res["results"]) == 10 and res["profile"]["keywords"][0]["text"] == "comedy"
    assert res["results"][0]["evidence"][0]["kind"] == "co-occurrence"


# -- render --
def test_titles_are_escaped():
    html = render.cards_html({"results": [{"rank": 1, "title": "<script>x</script>", "retrieval_rank": 3}]})
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_missing_scores_render_as_dash():
    rec = {"results": [{"rank": 1, "title": "A", "retrieval_rank": None, "score": None}],
           "candidates": [{"rank": 1, "index": 0, "title": "A", "score": float("nan")}]}
    assert "score — · outside SASRec top-N" in render.cards_html(rec)
    assert '<td class="rd-num">—</td>' in render.candidates_html(rec)


def test_move_badge():
    assert render.move_badge(1, 15) == ("▲ up 14", "up")
    assert render.move_badge(4, 1) == ("▼ down 3", "down")
    assert render.move_badge(2, 2)[1] == "same"
    assert render.move_badge(3, None) == ("new", "new")


def test_steer_reasons_on_cards():
    up = {"rank": 1, "index": 4, "title": "A", "retrieval_rank": 3,
          "steer": {"lift": 1, "added": ["horror"], "removed": []}}
    down = {"rank": 2, "index": 5, "title": "B", "retrieval_rank": 1,
            "steer": {"lift": -1, "added": [], "removed": ["comedy"]}}
    html = render.cards_html({"results": [up, down]}, baseline=[{"index": 5, "rank": 1}])
    assert "matches horror, which you added" in html and "matches comedy, which you removed" in html
    assert "new with your edit" in html and "▼ 1 with your edit" in html
    assert render.edit_move(up, None) is None and render.edit_move(up, [{"index": 4, "rank": 1}]) is None


def test_keywords_highlighted_in_summary():
    rec = {"history": [{"index": 5, "title": "Alien"}],
           "profile": {"keywords": [{"text": "sci-fi", "support": [5], "grounded": True}],
                       "summary": "Loves Sci-Fi classics."}}
    assert "<mark>Sci-Fi</mark>" in render.profile_html(rec)


# -- uploads --
def _write_pair(tmp_path, inter_rows, item_rows):
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    (d / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(inter_rows) + "\n")
    (d / "items.csv").write_text("item_id,title,categories\n" + "\n".join(item_rows) + "\n")
    return str(d / "interactions.csv"), str(d / "items.csv")


def test_upload_valid_pair_adds_dataset(ctx, tmp_path):
    inter = [f"u{u},i{(u + t) % 6},{t}" for u in range(4) for t in range(4)]
    items = [f"i{i},Item {i},A|B" for i in range(6)]
    ok, html = events.upload_dataset(ctx, *_write_pair(tmp_path, inter, items), "shop", session="s1")
    assert ok and "4 users" in html
    assert ("Uploaded · shop", "shop") in ctx.datasets("s1")
    assert ("Uploaded · shop", "shop") not in ctx.datasets("s2")  # other sessions do not see it
    assert ("Uploaded · shop", "shop") not in ctx.datasets()
    ok, html = events.upload_dataset(ctx, *_write_pair(tmp_path, inter, items), "shop", session="s1")
    assert not ok and "already uploaded" in html


def test_demo_data_dir_is_the_default_dataset(tmp_path):
    from recdemo.config import Config
    folder = tmp_path / "my-shop"
    folder.mkdir()
    c = fake_context(tmp_path, cfg=Config().set("data", "data_dir", str(folder)))
    assert c.default_dataset() == "my-shop" and ("my-shop", "my-shop") in c.datasets()
    assert events.search(c, "my-shop", "heat")[0][0] == "Heat (1995)"
    c.close()


def test_upload_error_names_file_line_column(ctx, tmp_path):
    inter = ["u1,i1,1", "u1,i2,yesterday"]
    ok, html = events.upload_dataset(ctx, *_write_pair(tmp_path, inter, ["i1,One,", "i2,Two,"]), "bad",
                                     session="s1")
    assert not ok
    assert "interactions.csv, line 3, column &#x27;timestamp&#x27;" in html
    assert ctx.uploads.names("s1") == []


def test_upload_size_limit(tmp_path):
    from recdemo.config import Config
    c = fake_context(tmp_path, cfg=Config().set("limits", "max_upload_mb", 0))
    ok, html = events.upload_dataset(c, *_write_pair(tmp_path, ["u,i,1"], ["i,T,"]), "big", session="s1")
    assert not ok and "limited to 0 MB" in html


def test_upload_missing_file_and_bad_name(ctx, tmp_path):
    pair = _write_pair(tmp_path, ["u,i,1"], ["i,T,"])
    assert "Please upload items.csv" in events.upload_dataset(ctx, pair[0], None, "x", session="s1")[1]
    assert "Dataset name" in events.upload_dataset(ctx, *pair, "../evil", session="s1")[1]


# -- fine-tune --
def test_finetune_runs_in_background_with_the_panels_values(tmp_path):
    from recdemo.config import Config

    service = FakeService()
    runner = fake_finetune(service)
    cfg = Config().set("finetune", "batch_size", 3).set("finetune", "eval_users", 7)
    ctx = fake_context(tmp_path, cfg=cfg, service=service, finetune_runner=runner)
    jid, html = events.start_finetune(ctx, "movielens-small", ["tallrec", "genrec"], 5.0, 16, 1e-3, "ml-ft")
    assert jid is not None, html
    ctx.jobs.wait(jid, timeout=10)
    (spec,) = runner.specs
    # the panel's values, the config's defaults for the rest (eval users left empty), a fresh run
    assert (spec.tasks, spec.steps, spec.lora_r, spec.lr) == (["tallrec", "genrec"], 5, 16, 1e-3)
    assert type(spec.steps) is int and (spec.batch_size, spec.eval_users, spec.resume) == (3, 7, False)
    assert spec.out == str(tmp_path / "adapters" / "ml-ft")
    st = events.poll_finetune(ctx, jid)
    assert st["finished"] and st["status"] == "done" and st["adapter"] == "ml-ft"
    assert [s for s, _ in st["losses"]] == [1, 2, 3, 4, 5] and st["losses"][-1][1] < st["losses"][0][1]
    assert ("ml-ft", "ml-ft") in events.adapter_choices(ctx)
    assert events.next_adapter_name(ctx, "movielens-small") == "movielens-small-ft1"
    events.start_finetune(ctx, "movielens-small", ["recommend"], 1, 8, 2e-4, "movielens-small-ft1")
    assert events.next_adapter_name(ctx, "movielens-small") == "movielens-small-ft2"  # queued/running counts
    # the new adapter is passed through to the recommender
    events.recommend(ctx, ["Heat (1995)"], "movielens-small", "score", "ml-ft", 50, 10)
    assert ctx.recs["movielens-small"].calls[-1]["adapter"] == "ml-ft"
    ctx.close()


@pytest.mark.parametrize("args, message", [
    ((["recommend"], 5, 8, 2e-4, "movielens-small"), "already exists"),
    (([], 5, 8, 2e-4, "x"), "unknown fine-tuning task"),
    ((["recommend", "nonsense"], 5, 8, 2e-4, "x"), "nonsense"),
    ((["genrec"], 0, 8, 2e-4, "x"), "steps"),
    ((["genrec"], None, 8, 2e-4, "x"), "Steps: enter a whole number"),
    ((["genrec"], 2.5, 8, 2e-4, "x"), "Steps: enter a whole number"),
    ((["genrec"], 2001, 8, 2e-4, "x"), "at most 2000"),
    ((["genrec"], 5, 8, 5, "x"), "learning rate"),
    ((["genrec"], 5, 8, 2e-4, "../x"), "Adapter name"),
])
def test_finetune_validation_messages(ctx, args, message):
    jid, html = events.start_finetune(ctx, "movielens-small", *args)
    assert jid is None and message in html and ctx.jobs.active() == []


def test_finetune_on_an_unknown_dataset_is_refused(ctx):
    jid, html = events.start_finetune(ctx, "nope", ["genrec"], 5, 8, 2e-4, "x")
    assert jid is None and "Unknown dataset" in html


def test_a_session_runs_one_finetune_at_a_time(tmp_path):
    service = FakeService()
    c = fake_context(tmp_path, service=service, finetune_runner=fake_finetune(service, step_seconds=0.05))
    first, _ = events.start_finetune(c, "movielens-small", ["recommend"], 200, 8, 2e-4, "first")
    again, html = events.start_finetune(c, "movielens-small", ["recommend"], 3, 8, 2e-4, "second",
                                        current=first)
    assert again == first and "still running" in html  # the session keeps tracking the first job
    assert [s["id"] for s in c.jobs.active()] == [first]
    events.cancel_finetune(c, first)
    assert c.jobs.wait(first, timeout=10)["status"] == "cancelled"
    after, _ = events.start_finetune(c, "movielens-small", ["recommend"], 3, 8, 2e-4, "second", current=first)
    assert after not in (None, first) and c.jobs.wait(after, timeout=10)["status"] == "done"
    c.close()


def test_second_finetune_waits_its_turn_and_cancel_works(tmp_path):
    service = FakeService()
    c = fake_context(tmp_path, service=service, finetune_runner=fake_finetune(service, step_seconds=0.05))
    a, _ = events.start_finetune(c, "movielens-small", ["recommend"], 200, 8, 2e-4, "first")
    b, html = events.start_finetune(c, "movielens-small", ["tallrec"], 3, 8, 2e-4, "second")
    assert "Waiting in line: position" in html
    assert "cancelling" in events.cancel_finetune(c, a).lower()
    assert c.jobs.wait(a, timeout=10)["status"] == "cancelled"
    assert c.jobs.wait(b, timeout=10)["status"] == "done"
    assert "first" not in c.adapters() and "second" in c.adapters()
    c.close()


def test_failed_finetune_shows_reason_and_keeps_adapters(tmp_path):
    service = FakeService()
    c = fake_context(tmp_path, service=service, finetune_runner=fake_finetune(service, fail_at=2))
    jid, _ = events.start_finetune(c, "movielens-small", ["recommend"], 5, 8, 2e-4, "oops")
    c.jobs.wait(jid, timeout=10)
    st = events.poll_finetune(c, jid)
    assert st["status"] == "failed" and "out of memory" in st["html"] and st["adapter"] is None
    assert c.adapters() == ["movielens-small"]
    c.close()
