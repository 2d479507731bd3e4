"""What one browser session keeps between events, shared by the panels."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from recdemo.app import events


@dataclass
class Session:
    history: gr.State  # titles, oldest first
    selected: gr.State  # position of the selected history item, or None
    job_id: gr.State  # this session's fine-tune job (one at a time)
    my_uploads: gr.State  # datasets uploaded in this browser session
    # the latest answer shown (its request, ranks, profile edit and "not interested" items): what a
    # profile edit is compared with, and what "not interested" adds to
    last: gr.State = None

    @classmethod
    def create(cls) -> "Session":
        return cls(gr.State([]), gr.State(None), gr.State(None), gr.State([]), gr.State(None))


def history_update(history: list[str], selected: int | None = None):
    """(history state, update of the history list) for every handler that changes the history."""
    return history, gr.update(choices=events.history_choices(history), value=selected)
