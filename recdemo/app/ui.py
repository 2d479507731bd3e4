"""The Gradio Blocks: the header, the panels (app/panels/: picker, results, finetune) and the
events that cross panels. Each handler converts between component values and the plain
functions in events.py; no model logic lives here."""
from __future__ import annotations

import gradio as gr

from recdemo.app import events, render
from recdemo.app.context import AppContext
from recdemo.app.panels import finetune, picker, results
from recdemo.app.panels.state import Session, history_update, session_id

INTRO = ("Pick a few items you liked, in the order you enjoyed them. The app writes a profile of your "
         "taste with an LLM, retrieves 50 candidates with SASRec, and lets a fine-tuned LLM pick and "
         "explain the top 10.")


def build_ui(ctx: AppContext) -> gr.Blocks:
    default = ctx.default_dataset()
    # analytics_enabled=False: the app runs offline and phones nobody (not even gradio's version check).
    with gr.Blocks(title="recdemo · explainable LLM recommendations", analytics_enabled=False) as demo:
        session = Session.create()
        with gr.Row(elem_id="rd-header"):
            gr.HTML(f"<h1>recdemo <span class='rd-sub'>explainable LLM recommendations</span></h1><p>{INTRO}</p>",
                    scale=4)
            status = gr.HTML(render.status_html(ctx.status()), scale=1, elem_id="rd-status")
        status_timer = gr.Timer(1.0)
        ft = finetune.build(ctx, default)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=320):
                pick = picker.build(ctx, default)
            with gr.Column(scale=10):
                res = results.build()

        _wire_status(ctx, status, status_timer, pick)
        picker.wire(ctx, pick, session)
        _wire_dataset(ctx, demo, pick, res, ft, session, status, status_timer)
        results.wire(ctx, res, pick, session)
        finetune.wire(ctx, ft, pick, session)
        finetune.wire_session_end(ctx, demo)
        _add_api(ctx, default)
    return demo


def _wire_status(ctx: AppContext, status: gr.HTML, timer: gr.Timer, p: picker.Picker) -> None:
    def on_status(ds, request: gr.Request):
        session = session_id(request)
        st = ctx.status(ds, session)
        if st["state"] not in ("ready", "error"):
            return render.status_html(st), gr.skip(), gr.skip(), gr.skip()
        names = list(events.personas(ctx, ds, session)) if ctx.is_loaded(ds, session) else []
        return (render.status_html(st), gr.Timer(active=False),
                gr.update(choices=events.adapter_choices(ctx, session)), gr.update(choices=names))

    timer.tick(on_status, p.dataset, [status, timer, p.adapter, p.persona], show_progress="hidden", queue=False)


def _wire_dataset(ctx: AppContext, demo: gr.Blocks, p: picker.Picker, r: results.Results, ft: finetune.FineTune,
                  s: Session, status: gr.HTML, status_timer: gr.Timer) -> None:
    """A new domain empties the history, the results and the profile editor; a new visitor sees
    adapters trained since launch."""
    def on_dataset(ds, request: gr.Request):
        session, names = session_id(request), []
        try:  # starts building the search index / retriever in the background
            busy = ctx.ensure_ready(ds, wait=1.0, session=session)
            msg = render.notice_html(busy, "info") if busy else ""
            names = list(events.personas(ctx, ds, session))
        except Exception as e:  # noqa: BLE001 - e.g. the dataset is not downloaded
            msg = render.notice_html(events.friendly_error(e))
        return (*history_update([]), None, gr.update(choices=names, value=None), msg, *r.cleared(),
                gr.update(choices=[], value=[]), "", None,
                gr.update(value=ds), render.status_html(ctx.status(ds, session)), gr.Timer(active=True))

    p.dataset.change(on_dataset, p.dataset, [s.history, p.hist_view, s.selected, p.persona, p.notice,
                                             *r.outputs(), r.kw_edit, r.summary_edit, s.last, ft.dataset, status,
                                             status_timer])

    def on_load(ds, request: gr.Request):  # a new visitor: adapters trained since launch, personas once loaded
        session = session_id(request)
        names = list(events.personas(ctx, ds, session)) if ctx.is_loaded(ds, session) else []
        return gr.update(choices=names), gr.update(choices=events.adapter_choices(ctx, session))

    demo.load(on_load, p.dataset, [p.persona, p.adapter], show_progress="hidden")


def _add_api(ctx: AppContext, default: str) -> None:
    """Endpoints for scripts (gradio_client): /recommend, /recommend_stream and /status."""
    def answers(history, dataset, ranker, adapter, n_candidates, k, profile_edit, exclude):
        try:  # checked at once; then scripts would rather wait than retry (model, dataset preparation)
            for data in events.run_stages(ctx, history, dataset, ranker, adapter, n_candidates, k, wait=600,
                                          model_wait=300, profile_edit=profile_edit, exclude=exclude or ()):
                yield events.api_result(data)
        except events.Busy as e:  # still preparing after 10 minutes: say so, it is not a bug
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # noqa: BLE001 - a clean error for the client, not a traceback
            raise gr.Error(events.friendly_error(e), print_exception=False) from None

    def recommend_api(history: list[str], dataset: str = default, ranker: str = "score",
                      adapter: str = "auto", n_candidates: int = 50, k: int = 10,
                      profile_edit: dict | None = None, exclude: list[int] | None = None) -> dict:
        """Recommendations for a history of item titles (oldest first): profile, SASRec candidates
        and the reranked top-k with explanations. Steering: ``profile_edit`` {"keywords": [...],
        "summary": "..."} replaces the LLM's profile; ``exclude``: catalog indices not to recommend."""
        final = None  # only the final JSON is returned
        for final in answers(history, dataset, ranker, adapter, n_candidates, k, profile_edit, exclude):
            pass
        return final

    def recommend_stream_api(history: list[str], dataset: str = default, ranker: str = "score",
                             adapter: str = "auto", n_candidates: int = 50, k: int = 10,
                             profile_edit: dict | None = None, exclude: list[int] | None = None) -> dict:
        """/recommend as it grows: one answer per finished stage ("stage": retrieval, rerank,
        explain... (one per batch of cards explained), profile, done; palr: profile before rerank);
        the last one is /recommend's answer."""
        # a generator: gradio reads the return annotation as the type of each yielded value
        yield from answers(history, dataset, ranker, adapter, n_candidates, k, profile_edit, exclude)

    def status_api(dataset: str = default) -> dict:
        """Whether the model is loaded and the dataset prepared ("state": "ready"), and what the
        app is doing."""
        return ctx.status(dataset)

    shared = ctx.recommend_concurrency()
    gr.api(recommend_api, api_name="recommend", **shared)
    gr.api(recommend_stream_api, api_name="recommend_stream", **shared)
    gr.api(status_api, api_name="status", queue=False)
