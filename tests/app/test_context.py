"""AppContext with the real fine-tune path: the tiny random LLaMA, a toy dataset, run_finetune."""
import json
import logging
from pathlib import Path

import pytest

from conftest import PopularityRetriever
from recdemo.app import events
from recdemo.app.context import AppContext, friendly_error
from recdemo.config import Config
from recdemo.errors import DataError
from recdemo.pipeline.recommender import Recommender


def test_a_finetune_from_the_panel_trains_a_real_adapter(tiny_service, toy_dataset, tmp_path):
    """The same call the Start button makes, down to run_finetune on the tiny model (no fakes)."""
    cfg = Config().set("llm", "adapter_dir", tiny_service.cfg.adapter_dir)
    for name, value in dict(batch_size=2, eval_candidates=6, n_candidates=6, max_length=256,
                            rank_eval=False, eval_every=1).items():
        cfg = cfg.set("finetune", name, value)
    rec = Recommender(toy_dataset, cfg, service=tiny_service, retriever=PopularityRetriever(toy_dataset))
    ctx = AppContext(cfg, service=tiny_service, recommender_factory=lambda name, folder: rec,
                     upload_root=str(tmp_path / "up"))
    ctx.model_ready.set()
    try:
        assert "mine" not in dict(events.adapter_choices(ctx)).values()
        jid, html = events.start_finetune(ctx, "movielens-small", ["tallrec", "recommend"], 2, 4, 3e-3, "mine",
                                          eval_users=3)
        assert jid is not None, html
        snap = ctx.jobs.wait(jid, timeout=300)
        assert snap["status"] == "done", snap["error"]
        st = events.poll_finetune(ctx, jid)
        assert st["adapter"] == "mine" and [s for s, _ in st["losses"]] == [1, 2]
        assert ("mine", "mine") in events.adapter_choices(ctx) and "mine" in tiny_service.available_adapters()
        meta = json.loads((Path(tiny_service.cfg.adapter_dir) / "mine" / "meta.json").read_text())
        assert (meta["tasks"], meta["steps"], meta["lora"]["r"], meta["lr"]) == (["tallrec", "recommend"], 2, 4, 3e-3)
        assert (meta["eval_users"], meta["batch_size"], meta["n_candidates"]) == (3, 2, 6)  # the rest: cfg.finetune
        # the same name again is refused, so the trained adapter keeps working
        again, html = events.start_finetune(ctx, "movielens-small", ["tallrec"], 1, 4, 3e-3, "mine")
        assert again is None and "already exists" in html
    finally:
        ctx.close()


def test_user_errors_are_one_log_line_unexpected_ones_keep_their_traceback(caplog):
    with caplog.at_level(logging.INFO, logger="recdemo.app"):
        assert friendly_error(DataError("bad number", file="x.csv", line=3)) == "x.csv, line 3: bad number"
        assert [r.getMessage().count("\n") for r in caplog.records] == [0]
        caplog.clear()
        try:
            raise RuntimeError("boom")
        except RuntimeError as e:
            assert "RuntimeError: boom" in friendly_error(e)
        assert "Traceback" in caplog.records[0].getMessage()


@pytest.mark.parametrize("steps", [1, 2000])
def test_steps_limit_comes_from_the_config(tmp_path, steps):
    cfg = Config().set("limits", "max_finetune_steps", steps)
    ctx = AppContext(cfg, upload_root=str(tmp_path / "up"))
    base = {"dataset": "movielens-small", "tasks": ["genrec"], "lr": 1e-4, "adapter": "a"}
    assert ctx.finetune_spec({**base, "steps": steps}).steps == steps
    with pytest.raises(ValueError, match=f"at most {steps}"):
        ctx.finetune_spec({**base, "steps": steps + 1})
    ctx.close()


def _toy_context(tiny_service, toy_dataset, tmp_path):
    cfg = Config().set("llm", "adapter_dir", tiny_service.cfg.adapter_dir)
    for name, value in dict(batch_size=2, eval_candidates=6, n_candidates=6, max_length=256,
                            rank_eval=False, eval_every=1).items():
        cfg = cfg.set("finetune", name, value)
    rec = Recommender(toy_dataset, cfg, service=tiny_service, retriever=PopularityRetriever(toy_dataset))
    ctx = AppContext(cfg, service=tiny_service, recommender_factory=lambda key, folder: rec,
                     upload_root=str(tmp_path / "up"))
    ctx.model_ready.set()
    return ctx


def test_an_adapter_trained_on_an_upload_serves_only_its_session(tiny_service, toy_dataset, tmp_path):
    """The real path: run_finetune writes the adapter into the session's folder and registers it
    under the session's key; the owner recommends with it by name, others cannot find it."""
    ctx = _toy_context(tiny_service, toy_dataset, tmp_path)
    (tmp_path / "in").mkdir()
    inter = "user_id,item_id,timestamp\n" + "".join(f"u{u},i{(u + t) % 5},{t}\n" for u in range(3) for t in range(3))
    (tmp_path / "in" / "interactions.csv").write_text(inter)
    (tmp_path / "in" / "items.csv").write_text("item_id,title\n" + "".join(f"i{i},T{i}\n" for i in range(5)))
    try:
        ctx.add_upload(str(tmp_path / "in" / "interactions.csv"), str(tmp_path / "in" / "items.csv"), "shop", "s1")
        jid, html = events.start_finetune(ctx, "shop", ["recommend"], 1, 4, 3e-3, "mine", eval_users=3,
                                          session="s1")
        assert jid is not None, html
        snap = ctx.jobs.wait(jid, timeout=300)
        assert snap["status"] == "done", snap["error"]
        assert "mine" not in tiny_service.available_adapters()  # nobody else is offered it
        assert not (Path(tiny_service.cfg.adapter_dir) / "mine").exists()
        history = list(toy_dataset.catalog.titles[:3])
        data = events.run_recommendation(ctx, history, "shop", "score", "mine", 6, 3, session="s1")
        assert data["adapter"] == "mine" and len(data["results"]) == 3
        with pytest.raises(Exception, match="adapter 'mine' not found"):
            events.run_recommendation(ctx, history, "movielens-small", "score", "mine", 6, 3, session="s2")
        # The tab closes: the adapter's weights leave the shared model, the upload leaves memory and disk.
        from recdemo.data import dataset as data_module

        folder = ctx.uploads.folder_for("s1")
        assert any(k[0].startswith(str(folder.resolve())) for k in data_module._CACHE)
        events.end_session(ctx, "s1")
        assert not [n for n in tiny_service.adapters.loaded if n.startswith("mine@")]
        assert not any(k[0].startswith(str(folder.resolve())) for k in data_module._CACHE)
        assert not folder.exists()
    finally:
        ctx.close()


def test_sasrec_training_in_the_app_reports_epochs_and_is_cancelled(tiny_service, toy_dataset, toy_text_index,
                                                                     tmp_path):
    """Real Stack/Retriever.for_dataset/train_sasrec: no checkpoint for the toy data, so preparing
    it trains SASRec; each epoch moves the status, and the cancel event stops the training."""
    cfg = Config().set("retrieval", "cache_dir", str(tmp_path / "sasrec")).set("retrieval", "epochs", 50)
    cfg = cfg.set("retrieval", "patience", 100).set("retrieval", "checkpoint_dir", str(tmp_path / "none"))
    epochs = []

    rec = Recommender(toy_dataset, cfg, service=tiny_service, text_index=toy_text_index)
    build = rec.stack.build_retriever

    def build_and_cancel(cancel=None, on_epoch=None):
        def seen(epoch, total, record):
            epochs.append((epoch, total))
            on_epoch(epoch, total, record)
            if epoch == 2:
                cancel.set()  # as ending the session does
        return build(cancel=cancel, on_epoch=seen)

    rec.stack.build_retriever = build_and_cancel
    ctx = AppContext(cfg, service=tiny_service, recommender_factory=lambda key, folder: rec,
                     upload_root=str(tmp_path / "up"))
    try:
        with pytest.raises(ValueError, match="Preparing Movies · MovieLens \\(small\\) was cancelled"):
            ctx.ensure_ready("movielens-small", wait=120)
        assert epochs == [(1, 50), (2, 50)]
        assert not [p for p in (tmp_path / "sasrec").rglob("*") if p.is_file()]  # nothing half-trained saved
    finally:
        ctx.close()
