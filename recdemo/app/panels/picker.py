"""The left column: choosing the history (search, personas, a random real user), the settings,
and the Recommend button."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from recdemo.app import events, render
from recdemo.app.context import RANKERS, AppContext
from recdemo.llm import rankers
from recdemo.app.panels.state import Session, history_update, session_id

NO_MATCHES = "Matches: click to add"


@dataclass
class Picker:
    dataset: gr.Dropdown
    query: gr.Textbox
    suggestions: gr.Radio
    hist_view: gr.Radio
    up_b: gr.Button
    down_b: gr.Button
    rm_b: gr.Button
    clear_b: gr.Button
    random_b: gr.Button
    persona: gr.Dropdown
    go: gr.Button
    notice: gr.HTML
    ranker: gr.Radio
    adapter: gr.Dropdown
    n_cand: gr.Slider
    n_top: gr.Slider


def build(ctx: AppContext, default: str) -> Picker:
    dataset = gr.Dropdown(ctx.datasets(), value=default, label="Domain", elem_id="rd-dataset")
    query = gr.Textbox(label="Search titles", placeholder="Type a title… typos are fine", elem_id="rd-search")
    suggestions = gr.Radio([], label=NO_MATCHES, elem_id="rd-suggestions")
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
    ranker, adapter, n_cand, n_top = _settings(ctx)
    return Picker(dataset, query, suggestions, hist_view, up_b, down_b, rm_b, clear_b, random_b, persona, go,
                  notice, ranker, adapter, n_cand, n_top)


def _settings(ctx: AppContext):
    """Ranker, adapter and sizes; the sliders end at the limits a request may choose."""
    cfg = ctx.cfg
    with gr.Accordion("Settings", open=True):
        ranker = gr.Radio([(label, name) for name, label in rankers.RANKER_LABELS.items()], value=cfg.llm.ranker if cfg.llm.ranker in RANKERS else "score",
                          label="Ranker", elem_id="rd-ranker")
        adapter = gr.Dropdown(events.adapter_choices(ctx), value=events.ADAPTER_AUTO, label="Adapter",
                              elem_id="rd-adapter")
        with gr.Row():
            n_cand = gr.Slider(10, cfg.limits.max_candidates, value=cfg.retrieval.n_candidates, step=5,
                               label="Candidates", elem_id="rd-ncand")
            n_top = gr.Slider(1, cfg.limits.max_results, value=cfg.llm.n_results, step=1, label="Results",
                              elem_id="rd-k")
    return ranker, adapter, n_cand, n_top


def wire(ctx: AppContext, p: Picker, s: Session) -> None:
    _wire_search(ctx, p, s)
    _wire_history(ctx, p, s)


def _wire_search(ctx: AppContext, p: Picker, s: Session) -> None:
    def on_search(ds, q, request: gr.Request):
        titles, msg = events.search(ctx, ds, q, session=session_id(request))
        # The label names the query the list answers: typing fast, a list may lag a keystroke.
        label = f"Matches for “{q.strip()}”: click to add" if titles else NO_MATCHES
        return gr.update(choices=titles, value=None, label=label), render.notice_html(msg, "info") if msg else ""

    p.query.input(on_search, [p.dataset, p.query], [p.suggestions, p.notice], trigger_mode="always_last",
                  show_progress="hidden")

    def on_pick(hist, title):
        new, msg = events.add_item(hist, title)
        if msg:
            gr.Warning(msg)
        return (*history_update(new), "", gr.update(choices=[], value=None, label=NO_MATCHES), "")

    pick_outputs = [s.history, p.hist_view, p.query, p.suggestions, p.notice]
    p.suggestions.input(on_pick, [s.history, p.suggestions], pick_outputs, show_progress="hidden")

    def on_submit(ds, hist, q, request: gr.Request):  # Enter in the search box adds the best match
        titles, msg = events.search(ctx, ds, q, session=session_id(request))
        if not titles:
            return (hist, gr.skip(), gr.skip(), gr.update(choices=[]),
                    render.notice_html(msg or "Type at least two letters.", "info"))
        return on_pick(hist, titles[0])

    p.query.submit(on_submit, [p.dataset, s.history, p.query], pick_outputs, show_progress="hidden")


def _wire_history(ctx: AppContext, p: Picker, s: Session) -> None:
    p.hist_view.input(lambda v: v, p.hist_view, s.selected, show_progress="hidden")
    moved = [s.history, p.hist_view, s.selected]

    def on_move(delta):
        def fn(hist, sel):
            new, pos = events.move_item(hist, sel, delta)
            return (*history_update(new, pos), pos)
        return fn

    p.up_b.click(on_move(-1), [s.history, s.selected], moved, show_progress="hidden")
    p.down_b.click(on_move(+1), [s.history, s.selected], moved, show_progress="hidden")

    def on_remove(hist, sel):
        new, pos = events.remove_item(hist, sel)
        return (*history_update(new, pos), pos)

    p.rm_b.click(on_remove, [s.history, s.selected], moved, show_progress="hidden")
    p.clear_b.click(lambda: (*history_update([]), None), None, moved, show_progress="hidden")

    def on_random(ds, request: gr.Request):
        new, msg = events.random_user(ctx, ds, session=session_id(request))
        return (*history_update(new), None, render.notice_html(msg) if msg else "")

    p.random_b.click(on_random, p.dataset, [*moved, p.notice])

    def on_persona(ds, name, request: gr.Request):
        new = events.persona_history(ctx, ds, name, session_id(request))
        if new is None:
            return gr.skip(), gr.skip(), gr.skip()
        return (*history_update(new), None)

    p.persona.input(on_persona, [p.dataset, p.persona], moved)
