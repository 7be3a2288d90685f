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


def _split_suffix(name: str) -> "tuple[str, str]":
    """``("step-10", ".json")``; a name without a suffix (``checkpoint-10``) keeps ``""``."""
    stem, ext = os.path.splitext(name)
    return (stem, ext) if stem and ext else (name, "")


def _temp_name(final: str) -> str:
    """``.step-10.tmp-<pid>-<hex>.json`` next to ``final``: hidden (HF Trainer's rotation globs
    ``checkpoint-*`` and must not see it), and the suffix stays last, because writers pick the format
    from it (XGBoost: ``.json`` JSON, else UBJSON) or append their own (``np.save`` adds ``.npy``)."""
    stem, ext = _split_suffix(os.path.basename(final))
    return os.path.join(os.path.dirname(final), f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")


def _appended(tmp: str) -> "list[str]":
    parent, base = os.path.split(tmp)
    return [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(base + ".")]


def _written(tmp: str) -> str:
    """What the writer made of ``tmp``: ``tmp`` itself, or ``tmp`` plus the one suffix it appended."""
    if os.path.lexists(tmp):
        return tmp
    appended = _appended(tmp)
    if len(appended) == 1:
        return appended[0]
    raise RuntimeError(f"atomic_checkpoint: nothing was written to the temp path {tmp}")


@contextlib.contextmanager
def atomic_checkpoint(path: "os.PathLike[str] | str", step: Optional[int] = None, **metrics: Any) -> Iterator[str]:
    """Yield a temp path next to ``path``; on success move it to ``path`` and announce it.

    The temp path does not exist yet: create a file there (``open(tmp, "w")``, ``torch.save(obj, tmp)``,
    ``booster.save_model(tmp)``) or a directory (``os.makedirs(tmp)``, ``model.save_pretrained(tmp)``).
    It ends with the suffix of ``path`` (``step-10.json`` -> ``.step-10.tmp-<pid>-<hex>.json``), so
    writers that choose the format by suffix write the right one; a writer that appends a suffix of
    its own (``np.save(tmp, a)`` on a ``.ckpt`` path writes ``<tmp>.npy``) is followed, and the file
    still lands at ``path``. When the block ends without an exception the temp file/tree is fsynced,
    renamed over ``path`` (replacing an older checkpoint of the same name), the parent directory is
    fsynced, and, if ``step`` is given, ``report.checkpoint(path, step, **metrics)`` is sent. On an
    exception the temp is removed, the exception propagates and nothing is announced. Without
    ``step`` it is a plain atomic write (handy for final artifacts). Parent directories are created.
    """
    final = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = _temp_name(final)
    try:
        yield tmp
        written = _written(tmp)
        _fsync_tree(written)
        if os.path.isdir(written) and os.path.isdir(final) and not os.path.islink(final):
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            stem, ext = _split_suffix(os.path.basename(final))
            old = os.path.join(parent, f".{stem}.old-{uuid.uuid4().hex[:8]}{ext}")
            os.rename(final, old)
            os.rename(written, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(written, final)
        _fsync_path(parent, directory=True)
    except BaseException:
        for leftover in [tmp, *_appended(tmp)]:
            _remove(leftover)
        raise
    if step is not None:
        report.checkpoint(final, step, **metrics)
