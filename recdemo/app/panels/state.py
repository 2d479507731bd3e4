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
    # the latest answer shown (its request, ranks, profile edit and "not interested" items): what a
    # profile edit is compared with, and what "not interested" adds to
    last: gr.State
    # The session's uploads are kept by AppContext under the Gradio session hash (each handler
    # takes ``request: gr.Request`` and passes ``session_id(request)``), not in a State a client
    # could set.

    @classmethod
    def create(cls) -> "Session":
        return cls(gr.State([]), gr.State(None), gr.State(None), gr.State(None))


def session_id(request: gr.Request | None) -> str | None:
    """The browser session an event comes from (None outside a Gradio event)."""
    return getattr(request, "session_hash", None) if request is not None else None


def history_update(history: list[str], selected: int | None = None):
    """(history state, update of the history list) for every handler that changes the history."""
    return history, gr.update(choices=events.history_choices(history), value=selected)
