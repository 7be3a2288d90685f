"""SIGTERM -> ``should_stop()``."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

# A plain flag, not a threading.Event: Event.set() takes a lock, and a signal handler that runs
# while the main thread holds that same lock (inside Event.wait) would deadlock.
_stopped = False
_install_lock = threading.Lock()
_installed = False


def _handler(previous: Any):
    def on_sigterm(signum, frame):  # runs in the main thread, between bytecodes
        global _stopped
        _stopped = True
        # Keep a handler somebody else installed before us working (e.g. a framework's own).
        if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
            previous(signum, frame)

    on_sigterm.__kiln__ = True  # type: ignore[attr-defined]
    return on_sigterm


def install_sigterm_handler() -> bool:
    """Install the SIGTERM handler once. Returns True if it is (now or already) installed.

    Python only allows installing signal handlers from the main thread; from another thread this
    returns False and tries again on the next call.
    """
    global _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    with _install_lock:
        if _installed:
            return True
        current = signal.getsignal(signal.SIGTERM)
        if not getattr(current, "__kiln__", False):
            signal.signal(signal.SIGTERM, _handler(current))
        _installed = True
    return True


def should_stop() -> bool:
    """True once the process got SIGTERM: save a checkpoint, announce it, and exit 0.

    The first call installs the SIGTERM handler (``kiln_trainer.context()`` does too), so call it
    (or ``context()``) early, before the long loop starts.
    """
    install_sigterm_handler()
    return _stopped


def wait_for_stop(timeout: float, poll: float = 0.05) -> bool:
    """Sleep up to ``timeout`` seconds, returning early (True) once SIGTERM has arrived.

    Use it instead of ``time.sleep`` in a trainer so a stop request is seen within ``poll`` seconds.
    """
    install_sigterm_handler()
    deadline = time.monotonic() + max(0.0, timeout)
    while not _stopped:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(poll, left))
    return True


def _request_stop() -> None:
    """Behave as if SIGTERM arrived (tests, custom stop conditions)."""
    global _stopped
    _stopped = True


def _reset() -> None:
    """Forget a received SIGTERM (tests only)."""
    global _stopped
    _stopped = False
