"""The Gradio Blocks: layout and wiring only. Each handler converts between component values and
the plain functions in events.py; no model logic lives here."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from recdemo.app import events, render
from recdemo.app.context import RANKERS, AppContext

INTRO = ("Pick a few items you liked, in the order you enjoyed them. The app writes a profile of your "
         "taste with an LLM, retrieves 50 candidates with SASRec, and lets a fine-tuned LLM pick and "
         "explain the top 10.")
RANKER_LABELS = [("PALR (LLM picks from candidates)", "palr"), ("Score (LLM log-likelihood)", "score"),
                 ("TALLRec (P(yes))", "tallrec"), ("GenRec (generate titles)", "genrec")]


def _hist(history: list[str], selected: int | None = None):
    """(history state, update of the history list) for every handler that changes the history."""
    return history, gr.update(choices=events.history_choices(history), value=selected)


def _loss_frame(points) -> pd.DataFrame:
    return pd.DataFrame(points or [], columns=["step", "loss"])


def build_ui(ctx: AppContext) -> gr.Blocks:
    default = ctx.default_dataset()
    cfg = ctx.cfg
    with gr.Blocks(title="recdemo · explainable LLM recommendations") as demo:
        history = gr.State([])
        selected = gr.State(None)
        job_id = gr.State(None)
        my_uploads = gr.State([])  # datasets uploaded in this browser session

        # ---------------- header ----------------
        with gr.Row(elem_id="rd-header"):
            gr.HTML(f"<h1>recdemo <span class='rd-sub'>explainable LLM recommendations</span></h1><p>{INTRO}</p>", scale=4)
            status = gr.HTML(render.status_html(ctx.status()), scale=1, elem_id="rd-status")
        status_timer = gr.Timer(1.0)

        # ---------------- fine-tune side panel ----------------
        with gr.Sidebar(open=False, position="right", width=380, elem_id="rd-sidebar"):
            gr.Markdown("### Fine-tune an adapter\nLoRA on the base model; recommendations keep "
                        "working while it runs.")
            with gr.Accordion("Upload your own data", open=False, elem_id="rd-upload"):
                gr.Markdown("`interactions.csv`: user_id,item_id,timestamp[,rating] · `items.csv`: "
                            "item_id,title[,description][,categories] (categories split by `|`). "
                            f"Up to {cfg.limits.max_upload_mb} MB each.")
                up_inter = gr.File(label="interactions.csv", file_types=[".csv"], type="filepath",
                                   elem_id="rd-up-inter")
                up_items = gr.File(label="items.csv", file_types=[".csv"], type="filepath", elem_id="rd-up-items")
                up_name = gr.Textbox(label="Dataset name", value="my-data", elem_id="rd-up-name")
                up_btn = gr.Button("Check and add dataset", elem_id="rd-up-btn")
                up_msg = gr.HTML(elem_id="rd-up-msg")
            ft_dataset = gr.Dropdown(ctx.datasets(), value=default, label="Dataset", elem_id="rd-ft-dataset")
            ft_tasks = gr.CheckboxGroup(render.task_choices(), value=["recommend", "recommend_retrieval"],
                                        label="Tasks", elem_id="rd-ft-tasks")
            with gr.Row():
                ft_steps = gr.Number(100, label="Steps", precision=0, minimum=1, elem_id="rd-ft-steps")
                ft_rank = gr.Dropdown([4, 8, 16, 32], value=8, label="LoRA rank", elem_id="rd-ft-rank")
            with gr.Row():
                ft_lr = gr.Number(2e-4, label="Learning rate", elem_id="rd-ft-lr")
                ft_eval = gr.Number(32, label="Validation users", precision=0, minimum=2, elem_id="rd-ft-eval")
            ft_name = gr.Textbox(events.next_adapter_name(ctx, default), label="Adapter name", elem_id="rd-ft-name")
            with gr.Row():
                ft_start = gr.Button("Start fine-tune", variant="primary", elem_id="rd-ft-start")
                ft_cancel = gr.Button("Cancel", variant="stop", elem_id="rd-ft-cancel")
            ft_progress = gr.HTML(elem_id="rd-ft-progress")
            ft_plot = gr.LinePlot(_loss_frame([]), x="step", y="loss", title="Training loss", height=220,
                                  elem_id="rd-ft-plot")
            ft_timer = gr.Timer(1.0, active=False)

        # ---------------- main view ----------------
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=320):
                dataset = gr.Dropdown(ctx.datasets(), value=default, label="Domain", elem_id="rd-dataset")
                query = gr.Textbox(label="Search titles", placeholder="Type a title… typos are fine",
                                   elem_id="rd-search")
                suggestions = gr.Radio([], label="Matches: click to add", elem_id="rd-suggestions")
                hist_view = gr.Radio([], label="Your history (oldest first): click one to move or remove it",
                                     elem_id="rd-history")
                with gr.Row():
                    up_b = gr.Button("▲ Up", size="sm", elem_id="rd-up")
                    down_b = gr.Button("▼ Down", size="sm", elem_id="rd-down")
                    rm_b = gr.Button("✕ Remove", size="sm", elem_id="rd-remove")
                    clear_b = gr.Button("Clear", size="sm", elem_id="rd-clear")
                with gr.Row():
                    random_b = gr.Button("Random real user", size="sm", elem_id="rd-random")
                persona = gr.Dropdown(list(events.personas(ctx, default)) if ctx.is_loaded(default) else [],
                                      value=None, label="Or start from a persona", elem_id="rd-persona")
                go = gr.Button("Recommend", variant="primary", size="lg", elem_id="rd-recommend")
                notice = gr.HTML(elem_id="rd-notice")
                with gr.Accordion("Settings", open=True):
                    ranker = gr.Radio(RANKER_LABELS, value=cfg.llm.ranker if cfg.llm.ranker in RANKERS else "score",
                                      label="Ranker", elem_id="rd-ranker")
                    adapter = gr.Dropdown(events.adapter_choices(ctx), value=events.ADAPTER_AUTO, label="Adapter",
                                          elem_id="rd-adapter")
                    with gr.Row():
                        n_cand = gr.Slider(10, 100, value=cfg.retrieval.n_candidates, step=5,
                                           label="Candidates", elem_id="rd-ncand")
                        n_top = gr.Slider(1, 20, value=cfg.llm.n_results, step=1, label="Results",
                                          elem_id="rd-k")
            with gr.Column(scale=10):
                profile = gr.HTML(render.placeholder_html("Your taste profile will appear here."),
                                  elem_id="rd-profile")
                meta = gr.HTML(elem_id="rd-meta")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        cards = gr.HTML(render.placeholder_html("The LLM's top 10, with reasons."),
                                        elem_id="rd-cards")
                    with gr.Column(scale=2, min_width=300):
                        cands = gr.HTML(render.placeholder_html("SASRec candidates."), elem_id="rd-candidates")
                with gr.Accordion("Prompt sent to the LLM", open=False, elem_id="rd-prompt-box"):
                    prompt = gr.Textbox(show_label=False, lines=14, max_lines=40, interactive=False,
                                        buttons=["copy"], elem_id="rd-prompt")

        # ---------------- wiring: status ----------------
        def on_status(ds):
            st = ctx.status(ds)
            if st["state"] not in ("ready", "error"):
                return render.status_html(st), gr.skip(), gr.skip(), gr.skip()
            names = list(events.personas(ctx, ds)) if ctx.is_loaded(ds) else []
            return (render.status_html(st), gr.Timer(active=False),
                    gr.update(choices=events.adapter_choices(ctx)), gr.update(choices=names))

        status_timer.tick(on_status, dataset, [status, status_timer, adapter, persona], show_progress="hidden",
                          queue=False)

        # ---------------- wiring: picker ----------------
        def on_search(ds, q):
            titles, msg = events.search(ctx, ds, q)
            # The label names the query the list answers: typing fast, a list may lag a keystroke.
            label = f"Matches for “{q.strip()}”: click to add" if titles else "Matches: click to add"
            return (gr.update(choices=titles, value=None, label=label),
                    render.notice_html(msg, "info") if msg else "")

        query.input(on_search, [dataset, query], [suggestions, notice], trigger_mode="always_last",
                    show_progress="hidden")

        def on_pick(hist, title):
            new, msg = events.add_item(hist, title)
            if msg:
                gr.Warning(msg)
            return (*_hist(new), "", gr.update(choices=[], value=None, label="Matches: click to add"), "")

        pick_outputs = [history, hist_view, query, suggestions, notice]
        suggestions.input(on_pick, [history, suggestions], pick_outputs, show_progress="hidden")

        def on_submit(ds, hist, q):  # Enter in the search box adds the best match
            titles, msg = events.search(ctx, ds, q)
            if not titles:
                return (hist, gr.skip(), gr.skip(), gr.update(choices=[]),
                        render.notice_html(msg or "Type at least two letters.", "info"))
            return on_pick(hist, titles[0])

        query.submit(on_submit, [dataset, history, query], pick_outputs, show_progress="hidden")
        hist_view.input(lambda v: v, hist_view, selected, show_progress="hidden")

        def on_move(delta):
            def fn(hist, sel):
                new, pos = events.move_item(hist, sel, delta)
                return (*_hist(new, pos), pos)
            return fn

        up_b.click(on_move(-1), [history, selected], [history, hist_view, selected], show_progress="hidden")
        down_b.click(on_move(+1), [history, selected], [history, hist_view, selected], show_progress="hidden")

        def on_remove(hist, sel):
            new, pos = events.remove_item(hist, sel)
            return (*_hist(new, pos), pos)

        rm_b.click(on_remove, [history, selected], [history, hist_view, selected], show_progress="hidden")
        clear_b.click(lambda: (*_hist([]), None), None, [history, hist_view, selected], show_progress="hidden")

        def on_random(ds):
            new, msg = events.random_user(ctx, ds)
            return (*_hist(new), None, render.notice_html(msg) if msg else "")

        random_b.click(on_random, dataset, [history, hist_view, selected, notice])

        def on_persona(ds, name):
            new = events.persona_history(ctx, ds, name)
            if new is None:
                return gr.skip(), gr.skip(), gr.skip()
            return (*_hist(new), None)

        persona.input(on_persona, [dataset, persona], [history, hist_view, selected])

        def on_dataset(ds):
            names = []
            try:  # starts building the search index / retriever in the background
                busy = ctx.ensure_ready(ds, wait=1.0)
                msg = render.notice_html(busy, "info") if busy else ""
                names = list(events.personas(ctx, ds))
            except Exception as e:  # noqa: BLE001 - e.g. the dataset is not downloaded
                msg = render.notice_html(events.friendly_error(e))
            return (*_hist([]), None, gr.update(choices=names, value=None), msg,
                    render.placeholder_html("Your taste profile will appear here."), "",
                    render.placeholder_html("The LLM's top 10, with reasons."),
                    render.placeholder_html("SASRec candidates."), "", gr.update(value=ds),
                    render.status_html(ctx.status(ds)), gr.Timer(active=True))

        dataset.change(on_dataset, dataset, [history, hist_view, selected, persona, notice, profile, meta,
                                             cards, cands, prompt, ft_dataset, status, status_timer])
        def on_load(ds):  # a new visitor: adapters trained since launch, personas once loaded
            names = list(events.personas(ctx, ds)) if ctx.is_loaded(ds) else []
            return gr.update(choices=names), gr.update(choices=events.adapter_choices(ctx))

        demo.load(on_load, dataset, [persona, adapter], show_progress="hidden")

        # ---------------- wiring: recommend ----------------
        def on_recommend(hist, ds, rk, ad, nc, k):
            out = events.recommend(ctx, hist, ds, rk, ad, nc, k)
            if not out["ok"]:
                gr.Warning(out["message"])
                skip = gr.skip()
                return render.notice_html(out["message"], out["kind"]), skip, skip, skip, skip, skip
            return ("", out["profile_html"], out["meta_html"], out["cards_html"], out["candidates_html"],
                    out["prompt"])

        go.click(on_recommend, [history, dataset, ranker, adapter, n_cand, n_top],
                 [notice, profile, meta, cards, cands, prompt], concurrency_limit=2, concurrency_id="recommend")

        # ---------------- wiring: fine-tune ----------------
        def on_upload(f_inter, f_items, name, mine):
            ok, html = events.upload_dataset(ctx, f_inter, f_items, name)
            if not ok:
                return html, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            mine = list(mine or []) + [name.strip()]
            choices = ctx.datasets(mine)
            return (html, gr.update(choices=choices), gr.update(choices=choices, value=name.strip()),
                    events.next_adapter_name(ctx, name.strip()), mine)

        up_btn.click(on_upload, [up_inter, up_items, up_name, my_uploads],
                     [up_msg, dataset, ft_dataset, ft_name, my_uploads])

        def on_start(ds, tasks, steps, rank, lr, name, n_eval):
            jid, html = events.start_finetune(ctx, ds, tasks, steps, rank, lr, name, n_eval)
            return jid, html, _loss_frame([]), gr.Timer(active=jid is not None)

        ft_start.click(on_start, [ft_dataset, ft_tasks, ft_steps, ft_rank, ft_lr, ft_name, ft_eval],
                       [job_id, ft_progress, ft_plot, ft_timer])

        def on_tick(jid, ft_ds):
            st = events.poll_finetune(ctx, jid)
            if not st["finished"]:
                return st["html"], _loss_frame(st["losses"]), gr.skip(), gr.skip(), gr.skip()
            ad = (gr.update(choices=events.adapter_choices(ctx), value=st["adapter"]) if st["adapter"]
                  else gr.update(choices=events.adapter_choices(ctx)))
            return (st["html"], _loss_frame(st["losses"]), ad, gr.Timer(active=False),
                    events.next_adapter_name(ctx, ft_ds))

        ft_timer.tick(on_tick, [job_id, ft_dataset], [ft_progress, ft_plot, adapter, ft_timer, ft_name],
                      show_progress="hidden")
        ft_dataset.input(lambda ds: events.next_adapter_name(ctx, ds), ft_dataset, ft_name, show_progress="hidden")
        ft_cancel.click(lambda jid: events.cancel_finetune(ctx, jid), job_id, ft_progress)

        # ---------------- API for scripts (gradio_client) ----------------
        def recommend_api(history: list[str], dataset: str = default, ranker: str = "score",
                          adapter: str = "auto", n_candidates: int = 50, k: int = 10) -> dict:
            """Recommendations for a history of item titles (oldest first): profile, SASRec candidates
            and the reranked top-k with explanations."""
            ctx.wait_ready(300)
            try:  # scripts would rather wait than retry: up to 10 minutes for a dataset to be prepared
                data = events.run_recommendation(ctx, history, dataset, ranker, adapter, n_candidates, k,
                                                 wait=600)
            except Exception as e:  # noqa: BLE001 - a clean error for the client, not a traceback
                raise gr.Error(events.friendly_error(e)) from None
            return events.api_result(data)

        def status_api(dataset: str = default) -> dict:
            """Whether the model is loaded and the dataset prepared ("state": "ready"), and what the
            app is doing."""
            return ctx.status(dataset)

        gr.api(recommend_api, api_name="recommend", concurrency_limit=2, concurrency_id="recommend")
        gr.api(status_api, api_name="status", queue=False)
    return demo
