"""app/main.py: SIGTERM stops the app like Ctrl-C (so AppContext.close removes its uploads), and
the cleanup pass runs when the app is built."""
import os
import signal
import time

import pytest

from _app_fakes import fake_context


def test_sigterm_becomes_a_keyboard_interrupt_for_gradios_blocking_loop():
    from recdemo.app.main import _stop_on_sigterm

    previous = signal.getsignal(signal.SIGTERM)
    try:
        _stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs in the main thread at the next bytecode
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_building_the_app_cleans_up_at_once(tmp_path):
    from recdemo.app.main import build

    ctx = fake_context(tmp_path)
    stale = tmp_path / "adapters" / "crashed.partial"
    stale.mkdir(parents=True)
    old = time.time() - 7 * 3600
    os.utime(stale, (old, old))
    try:
        build(ctx.cfg, ctx, warmup=False)
        deadline = time.time() + 10
        while stale.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert not stale.exists()
    finally:
        ctx.close()
