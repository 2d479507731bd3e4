"""`python -m recdemo demo`: launch the Gradio app."""
from __future__ import annotations

from recdemo.app.main import launch
from recdemo.config import Config


def cli_demo(args, cfg: Config) -> int:
    if getattr(args, "share", False):
        cfg = cfg.set("app", "share", True)
    launch(cfg)
    return 0
