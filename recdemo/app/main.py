"""Launching the app: ``python app.py``, ``python -m recdemo demo`` or a Hugging Face Space.

The page is served at once; the default dataset and the model load in a background thread
(the header shows the progress), so the page is interactive long before the model is ready.
"""
from __future__ import annotations

import logging
import signal
import threading

from recdemo.config import Config
from recdemo.app.context import AppContext
from recdemo.app import render, stream_diff
from recdemo.app.ui import build_ui

log = logging.getLogger("recdemo.app")


def build(cfg: Config | None = None, ctx: AppContext | None = None, warmup: bool = True):
    """(demo, ctx): the Blocks and the shared context, not yet launched."""
    cfg = cfg or Config.from_env()
    ctx = ctx or AppContext(cfg)
    ctx.start_cleanup()  # leftovers of killed runs now, then on a timer (app/cleanup.py)
    if warmup:
        ctx.start_warmup()
    demo = build_ui(ctx)
    stream_diff.install()  # streamed states whose lists shrink (cards reordered) must reach the clients
    # A fine-tune runs on its own thread (jobs.py). Recommend events share one concurrency limit
    # (ctx.recommend_concurrency, from the config): concurrent requests run together and their model
    # calls are batched (llm/coalesce.py); the other events are light.
    demo.queue(default_concurrency_limit=4, max_size=cfg.app.queue_size)
    return demo, ctx


def launch_kwargs(cfg: Config) -> dict:
    return dict(server_name=cfg.app.host, server_port=cfg.app.port, share=cfg.app.share,
                css=render.CSS, theme=_theme(), footer_links=["api", "gradio"],
                max_file_size=f"{cfg.limits.max_upload_mb}mb", show_error=False, ssr_mode=False)


def launch(cfg: Config | None = None, ctx: AppContext | None = None, block: bool = True, **overrides):
    """Start the server. ``block=False`` returns (demo, ctx, url) with the server running in the
    background (tests, bench/load.py)."""
    cfg = cfg or Config.from_env()
    logging.basicConfig(level=cfg.log.level, format="%(asctime)s %(name)s %(message)s")
    demo, ctx = build(cfg, ctx, warmup=overrides.pop("warmup", True))
    kwargs = {**launch_kwargs(cfg), **overrides}
    if block:
        _stop_on_sigterm()
    _, url, _ = demo.launch(prevent_thread_lock=not block, **kwargs)
    if not block:
        return demo, ctx, url
    ctx.close()  # after Ctrl-C or SIGTERM: running work cancelled, this process's uploads removed
    return None


def _stop_on_sigterm() -> None:
    """SIGTERM (a Space stopping, `kill`) ends the app like Ctrl-C, so ``ctx.close`` runs; gradio's
    blocking loop turns KeyboardInterrupt into a server shutdown."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _theme():
    import gradio as gr

    # Fonts served by gradio itself (LocalFont) or the system: nothing is fetched from the internet.
    f = gr.themes.Font
    return gr.themes.Default(primary_hue="indigo", neutral_hue="slate",
                          # (lists of a length no built-in theme uses: gradio 6.31 compares themes
                          # font by font and fails on a Font-vs-str pair)
                          font=[gr.themes.LocalFont("Source Sans Pro"), f("ui-sans-serif"), f("system-ui"),
                                f("Segoe UI"), f("Helvetica"), f("sans-serif")],
                          font_mono=[gr.themes.LocalFont("IBM Plex Mono"), f("ui-monospace"), f("SFMono-Regular"),
                                     f("Menlo"), f("Consolas"), f("monospace")])
