"""The right column: the taste profile (editable: steering), the LLM's top-k with reasons, SASRec's
candidates and the prompt. Filled as the stages finish (a generator event per button): SASRec's
list first, then the LLM's order, each explanation as it is written, the profile (for palr, whose
prompt reads it, the profile comes before the LLM's order)."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from recdemo.app import events, render
from recdemo.app.context import AppContext
from recdemo.app.panels.picker import Picker
from recdemo.app.panels.state import Session, session_id

PROFILE_HINT = "Your taste profile will appear here."
CARDS_HINT = "The LLM's top 10, with reasons."
CANDIDATES_HINT = "SASRec candidates."
KEYWORDS_LABEL = "Steer: your taste keywords (× removes one; type a new one and press Enter)"


@dataclass
class Results:
    profile: gr.HTML
    meta: gr.HTML
    cards: gr.HTML
    cands: gr.HTML
    prompt: gr.Textbox
    kw_edit: gr.Dropdown
    summary_edit: gr.Textbox
    steer: gr.Button

    def cleared(self) -> tuple:
        """The values of (profile, meta, cards, cands, prompt) before any recommendation."""
        return (render.placeholder_html(PROFILE_HINT), "", render.placeholder_html(CARDS_HINT),
                render.placeholder_html(CANDIDATES_HINT), "")

    def outputs(self) -> list:
        return [self.profile, self.meta, self.cards, self.cands, self.prompt]


def build() -> Results:
    profile = gr.HTML(render.placeholder_html(PROFILE_HINT), elem_id="rd-profile")
    with gr.Accordion("Steer: edit the profile and rerun", open=True, elem_id="rd-steer-box"):
        with gr.Row(equal_height=True):
            kw_edit = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label=KEYWORDS_LABEL,
                                  scale=3, elem_id="rd-kw-edit")
            summary_edit = gr.Textbox(label="The profile's sentence", lines=2, scale=3, elem_id="rd-summary-edit")
            steer = gr.Button("Rerun with my edits", size="sm", scale=1, elem_id="rd-steer")
    meta = gr.HTML(elem_id="rd-meta")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            cards = gr.HTML(render.placeholder_html(CARDS_HINT), elem_id="rd-cards", js_on_load=render.DISMISS_JS)
        with gr.Column(scale=2, min_width=300):
            cands = gr.HTML(render.placeholder_html(CANDIDATES_HINT), elem_id="rd-candidates")
    with gr.Accordion("Prompt sent to the LLM", open=False, elem_id="rd-prompt-box"):
        prompt = gr.Textbox(show_label=False, lines=14, max_lines=40, interactive=False, buttons=["copy"],
                            elem_id="rd-prompt")
    return Results(profile, meta, cards, cands, prompt, kw_edit, summary_edit, steer)


def _shown(out: dict, request: list, edit, exclude) -> tuple:
    """(notice, profile, meta, cards, cands, prompt, keyword editor, sentence editor, last answer) of
    one streamed state. The editors are filled once, when the profile arrives (later states must
    not undo what the user is typing); the session remembers only the final answer."""
    skip = gr.skip()
    if not out.get("ok"):
        gr.Warning(out["message"])
        return render.notice_html(out["message"], out["kind"]), skip, skip, skip, skip, skip, skip, skip, skip
    editors = (skip, skip)
    if out["stage"] == "profile":
        choices, chosen, summary = events.profile_editor(out["data"])
        editors = (gr.update(choices=choices, value=chosen), summary)
    last = skip
    if out["stage"] == "done":
        last = {"request": request, "edit": edit, "exclude": list(exclude),
                "results": [{"index": r["index"], "rank": r["rank"]} for r in out["data"].get("results", [])]}
    return ("", out["profile_html"], out["meta_html"], out["cards_html"], out["candidates_html"], out["prompt"],
            *editors, last)


def wire(ctx: AppContext, r: Results, p: Picker, s: Session) -> None:
    controls = [s.history, p.dataset, p.ranker, p.adapter, p.n_cand, p.n_top]
    outputs = [p.notice, *r.outputs(), r.kw_edit, r.summary_edit, s.last]

    def stream(request: list, session, edit=None, exclude=(), baseline=None):
        for out in events.recommend_stream(ctx, *request, profile_edit=edit, exclude=exclude, baseline=baseline,
                                           session=session):
            yield _shown(out, request, edit, exclude)

    def on_recommend(hist, ds, rk, ad, nc, k, request: gr.Request):  # a fresh answer: no edit, nothing dismissed
        yield from stream([hist, ds, rk, ad, nc, k], session_id(request))

    def on_steer(hist, ds, rk, ad, nc, k, keywords, summary, last, request: gr.Request):
        shown = [hist, ds, rk, ad, nc, k]
        same = bool(last) and last["request"] == shown  # else there is nothing to compare with
        yield from stream(shown, session_id(request), {"keywords": list(keywords or []), "summary": summary or ""},
                          last["exclude"] if same else (), last["results"] if same else None)

    def on_dismiss(hist, ds, rk, ad, nc, k, last, evt: gr.EventData, request: gr.Request):
        shown = [hist, ds, rk, ad, nc, k]
        if not last or last["request"] != shown:
            message = "The history or the settings changed since these results: press Recommend first."
            yield _shown({"ok": False, "kind": "info", "message": message}, shown, None, ())
            return
        item = (getattr(evt, "_data", None) or {}).get("index")
        yield from stream(shown, session_id(request), last["edit"], events.dismissed(last["exclude"], item))

    shared = ctx.recommend_concurrency()
    p.go.click(on_recommend, controls, outputs, **shared)
    r.steer.click(on_steer, [*controls, r.kw_edit, r.summary_edit, s.last], outputs, **shared)
    r.cards.dismiss(on_dismiss, [*controls, s.last], outputs, **shared)
