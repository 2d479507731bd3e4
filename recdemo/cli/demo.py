"""`python -m recdemo demo`: launch the Gradio app."""
from __future__ import annotations

from recdemo.app.main import launch
from recdemo.config import Config


def cli_demo(args, cfg: Config) -> int:
    launch(cfg)  # --host/--port/--share are already in cfg.app
    return 0
