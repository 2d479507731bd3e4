"""The page's layout without a browser: the panels' fields start from the config, every element
the browser test and the CSS address is there, analytics are off."""
import pytest

from _app_fakes import fake_context
from recdemo.app.ui import build_ui
from recdemo.config import Config

ELEM_IDS = ["rd-header", "rd-status", "rd-sidebar", "rd-upload", "rd-up-inter", "rd-up-items", "rd-up-name",
            "rd-up-btn", "rd-up-msg", "rd-ft-dataset", "rd-ft-tasks", "rd-ft-steps", "rd-ft-rank", "rd-ft-lr",
            "rd-ft-eval", "rd-ft-name", "rd-ft-start", "rd-ft-cancel", "rd-ft-progress", "rd-ft-plot",
            "rd-dataset", "rd-search", "rd-suggestions", "rd-history", "rd-up", "rd-down", "rd-remove",
            "rd-clear", "rd-random", "rd-persona", "rd-recommend", "rd-notice", "rd-ranker", "rd-adapter",
            "rd-ncand", "rd-k", "rd-profile", "rd-steer-box", "rd-kw-edit", "rd-summary-edit", "rd-steer", "rd-meta", "rd-cards", "rd-candidates", "rd-prompt-box",
            "rd-prompt"]


def page(cfg, tmp_path):
    ctx = fake_context(tmp_path, cfg=cfg)
    demo = build_ui(ctx)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    return demo, by_id, ctx


@pytest.mark.parametrize("overrides", [{}, {"steps": 37, "lr": 1e-3, "lora_r": 12, "eval_users": 5,
                                            "tasks": ["tallrec"]}])
def test_finetune_fields_start_from_the_config(tmp_path, overrides):
    cfg = Config()
    for name, value in overrides.items():
        cfg = cfg.set("finetune", name, value)
    cfg = cfg.set("limits", "max_finetune_steps", 321)
    demo, el, ctx = page(cfg, tmp_path)
    ft = cfg.finetune
    assert (el["rd-ft-steps"].value, el["rd-ft-lr"].value, el["rd-ft-rank"].value, el["rd-ft-eval"].value) == (
        ft.steps, ft.lr, ft.lora_r, ft.eval_users)
    assert el["rd-ft-steps"].maximum == 321
    assert el["rd-ft-tasks"].value == ft.tasks
    assert ft.lora_r in [v for _, v in el["rd-ft-rank"].choices]
    ctx.close()


def test_sliders_end_at_the_limits_and_every_element_is_there(tmp_path):
    cfg = Config().set("limits", "max_candidates", 150).set("limits", "max_results", 30)
    demo, el, ctx = page(cfg, tmp_path)
    assert (el["rd-ncand"].maximum, el["rd-k"].maximum) == (150, 30)
    assert el["rd-ncand"].value == cfg.retrieval.n_candidates and el["rd-k"].value == cfg.llm.n_results
    assert [i for i in ELEM_IDS if i not in el] == []
    assert demo.analytics_enabled is False
    assert {"recommend", "recommend_stream", "status"} <= {d.api_name for d in demo.fns.values()}
    ctx.close()


def test_every_recommend_event_shares_one_concurrency_limit_from_the_config(tmp_path):
    """The page's Recommend / Rerun / Not interested and the two APIs run together (their model
    calls are batched), up to app.concurrent_requests at once: one limit for all of them."""
    demo, el, ctx = page(Config().set("app", "concurrent_requests", 7), tmp_path)
    recommend = [d for d in demo.fns.values() if d.concurrency_id == "recommend"]
    apis = {d.api_name for d in recommend}
    assert {"recommend", "recommend_stream"} <= apis and len(recommend) >= 5  # + the page's three events
    assert {d.concurrency_limit for d in recommend} == {7}
    ctx.close()


def test_closing_a_tab_ends_its_session(tmp_path):
    """The page's unload event hands the closing tab's session to AppContext.end_session."""
    from types import SimpleNamespace

    demo, el, ctx = page(Config(), tmp_path)
    ended = []
    ctx.end_session = ended.append
    unload = [d for d in demo.fns.values() if any(t[1] == "unload" for t in d.targets)]
    assert len(unload) == 1
    unload[0].fn(SimpleNamespace(session_hash="tab-1"))
    assert ended == ["tab-1"]
    ctx.close()
