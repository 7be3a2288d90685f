"""``atomic_checkpoint()``: write to a temp name, fsync, rename, then announce."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Any, Iterator, Optional

from . import report


def _fsync_path(path: str, directory: bool) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    _fsync_path(full, directory=False)
            _fsync_path(root, directory=True)
    else:
        _fsync_path(path, directory=False)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def atomic_checkpoint(path: "os.PathLike[str] | str", step: Optional[int] = None, **metrics: Any) -> Iterator[str]:
    """Yield a temp path next to ``path``; on success move it to ``path`` and announce it.

    The temp path does not exist yet: create a file there (``open(tmp, "w")``, ``torch.save(obj, tmp)``)
    or a directory (``os.makedirs(tmp)``, ``model.save_pretrained(tmp)``). When the block ends without
    an exception the temp file/tree is fsynced, renamed over ``path`` (replacing an older checkpoint
    of the same name), the parent directory is fsynced, and, if ``step`` is given,
    ``report.checkpoint(path, step, **metrics)`` is sent. On an exception the temp is removed, the
    exception propagates and nothing is announced. Without ``step`` it is a plain atomic write
    (handy for final artifacts). Parent directories are created.
    """
    final = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    # Hidden name: HF Trainer's checkpoint rotation globs "checkpoint-*" and must not see it.
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise RuntimeError(f"atomic_checkpoint: nothing was written to the temp path {tmp}")
        _fsync_tree(tmp)
        if os.path.isdir(tmp) and os.path.isdir(final) and not os.path.islink(final):
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = os.path.join(parent, f".{os.path.basename(final)}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_path(parent, directory=True)
    except BaseException:
        _remove(tmp)
        raise
    if step is not None:
        report.checkpoint(final, step, **metrics)
