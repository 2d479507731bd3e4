"""The right column: the taste profile, the LLM's top-k with reasons, SASRec's candidates and
the prompt; filled by the Recommend button."""
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


@dataclass
class Results:
    profile: gr.HTML
    meta: gr.HTML
    cards: gr.HTML
    cands: gr.HTML
    prompt: gr.Textbox

    def cleared(self) -> tuple:
        """The values of (profile, meta, cards, cands, prompt) before any recommendation."""
        return (render.placeholder_html(PROFILE_HINT), "", render.placeholder_html(CARDS_HINT),
                render.placeholder_html(CANDIDATES_HINT), "")

    def outputs(self) -> list:
        return [self.profile, self.meta, self.cards, self.cands, self.prompt]


def build() -> Results:
    profile = gr.HTML(render.placeholder_html(PROFILE_HINT), elem_id="rd-profile")
    meta = gr.HTML(elem_id="rd-meta")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            cards = gr.HTML(render.placeholder_html(CARDS_HINT), elem_id="rd-cards")
        with gr.Column(scale=2, min_width=300):
            cands = gr.HTML(render.placeholder_html(CANDIDATES_HINT), elem_id="rd-candidates")
    with gr.Accordion("Prompt sent to the LLM", open=False, elem_id="rd-prompt-box"):
        prompt = gr.Textbox(show_label=False, lines=14, max_lines=40, interactive=False, buttons=["copy"],
                            elem_id="rd-prompt")
    return Results(profile, meta, cards, cands, prompt)


def wire(ctx: AppContext, r: Results, p: Picker, s: Session) -> None:
    def on_recommend(hist, ds, rk, ad, nc, k, request: gr.Request):
        out = events.recommend(ctx, hist, ds, rk, ad, nc, k, session=session_id(request))
        if not out["ok"]:
            gr.Warning(out["message"])
            skip = gr.skip()
            return render.notice_html(out["message"], out["kind"]), skip, skip, skip, skip, skip
        return ("", out["profile_html"], out["meta_html"], out["cards_html"], out["candidates_html"],
                out["prompt"])

    p.go.click(on_recommend, [s.history, p.dataset, p.ranker, p.adapter, p.n_cand, p.n_top],
               [p.notice, *r.outputs()], concurrency_limit=2, concurrency_id="recommend")
