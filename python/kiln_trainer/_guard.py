"""Parent-death guard: stdin EOF means the Kiln supervisor is gone."""

from __future__ import annotations

import os
import stat
import threading

#: Exit status used when stdin reaches EOF (nobody is left to read it; any non-zero is "retryable").
PARENT_GONE_EXIT_CODE = 1

_lock = threading.Lock()
_thread: "threading.Thread | None" = None


def _stdin_is_pipe(fd: int = 0) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _watch(fd: int, exit_code: int) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:  # pragma: no cover - PEP 475 retries anyway
            continue
        except OSError:
            return  # stdin unusable (closed by the program itself): stop watching, don't kill
        if not chunk:
            break
        # Data on stdin is not part of the protocol: discard it and keep waiting for EOF.
    try:
        os.write(2, b"kiln_trainer: stdin closed, the Kiln supervisor is gone; exiting\n")
    except OSError:
        pass
    os._exit(exit_code)


def guard_parent(exit_code: int = PARENT_GONE_EXIT_CODE) -> bool:
    """Start (once) a daemon thread that exits the process when stdin reaches EOF.

    Only acts when stdin is a pipe/FIFO or socket, as Kiln's supervisor provides; with a tty,
    ``/dev/null``, a regular file or a closed stdin it does nothing. The thread consumes stdin, so do
    not call this if your trainer reads stdin itself. Returns True if the guard is running.
    """
    global _thread
    with _lock:
        if _thread is not None and _thread.is_alive():
            return True
        if not _stdin_is_pipe(0):
            return False
        _thread = threading.Thread(target=_watch, args=(0, exit_code), name="kiln-parent-guard", daemon=True)
        _thread.start()
        return True
