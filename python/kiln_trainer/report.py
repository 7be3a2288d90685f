"""Events on the Kiln events pipe (fd 3): one JSON object per line.

Every function writes exactly one line with a single ``os.write`` call (looping only on a short
write) under a process-wide lock, so events from several threads never interleave. Each function
returns ``True`` when the line was written and ``False`` when it was not (no events fd, a closed
pipe, a line over 64 KiB); it never raises because of the pipe.

Which fd is used:

* ``KILN_EVENTS_FD`` set to a number: that fd, if it is open.
* ``KILN_EVENTS_FD`` unset: fd 3, but only if fd 3 is a pipe or a socket, so a script run by hand
  never scribbles JSON into some unrelated file that happens to be open as fd 3.
* ``KILN_EVENTS_FD`` empty, negative or not a number: events are off.

Values are made JSON-safe: numpy/torch scalars (anything with ``.item()``), ``Decimal``,
``Fraction`` become numbers, NaN and +/-inf become ``null``, paths become absolute strings.
Metric values that are not numbers at all (strings, lists) are dropped with a one-time warning on
stderr, because the protocol's ``metrics``/``values`` maps hold numbers.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import stat
import sys
import threading
from typing import Any, Dict, Mapping, Optional

__all__ = ["progress", "checkpoint", "metrics", "artifact", "events_fd", "MAX_LINE_BYTES"]

#: Kiln drops event lines longer than this (see docs/trainer-protocol.md).
MAX_LINE_BYTES = 64 * 1024

_DEFAULT_FD = 3
_lock = threading.Lock()
_warned: set = set()


def _reinit_after_fork() -> None:  # a forked child must not inherit a held lock
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    try:
        sys.stderr.write(f"kiln_trainer: {message}\n")
        sys.stderr.flush()
    except Exception:  # pragma: no cover - stderr closed
        pass


def configured_fd() -> Optional[int]:
    """The events fd number the environment asks for, or ``None`` when events are off.

    This only parses the environment; :func:`events_fd` also checks that the fd is usable.
    """
    raw = os.environ.get("KILN_EVENTS_FD")
    if raw is None:
        return _DEFAULT_FD
    raw = raw.strip()
    if raw == "":
        return None
    try:
        fd = int(raw)
    except ValueError:
        _warn_once("bad-fd", f"KILN_EVENTS_FD={raw!r} is not a number; events are disabled")
        return None
    return fd if fd >= 0 else None


def events_fd() -> Optional[int]:
    """The fd events go to right now, or ``None`` when events are a no-op."""
    fd = configured_fd()
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        return None  # not open: running by hand
    if "KILN_EVENTS_FD" not in os.environ and not (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
        return None  # unset variable and fd 3 is some unrelated file: leave it alone
    return fd


# --------------------------------------------------------------------------- JSON safety


def _number(value: Any) -> Any:
    """A JSON number or None for ``value``; raises TypeError if it is not numeric at all."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes, Mapping, list, tuple)):
        try:
            inner = item()  # numpy scalar, 0-d array, 1-element torch tensor
        except Exception:
            inner = None
        else:
            if inner is not value:
                return _number(inner)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (numbers.Real, numbers.Number)) or hasattr(value, "__float__"):
        try:
            f = float(value)
        except Exception as exc:
            raise TypeError(f"not a number: {value!r}") from exc
        return f if math.isfinite(f) else None
    raise TypeError(f"not a number: {value!r}")


def _metric_map(values: Mapping[str, Any], where: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in values.items():
        try:
            out[str(key)] = _number(value)
        except TypeError:
            _warn_once(f"drop:{where}:{key}", f"{where} value {key!r}={value!r} is not a number; dropped")
    return out


def _abspath(path: Any) -> str:
    return os.path.abspath(os.fspath(path))


# --------------------------------------------------------------------------- writing


def _emit(event: Dict[str, Any]) -> bool:
    fd = events_fd()
    if fd is None:
        return False
    try:
        line = json.dumps(event, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:  # pragma: no cover - _number already sanitised
        _warn_once("encode", f"could not encode event {event.get('type')!r}: {exc}")
        return False
    data = (line + "\n").encode("utf-8")
    if len(data) > MAX_LINE_BYTES:
        _warn_once("too-long", f"{event.get('type')} event of {len(data)} bytes exceeds 64 KiB; dropped")
        return False
    with _lock:
        try:
            written = os.write(fd, data)
            while written < len(data):  # only on a short write (signal mid-write); keeps one line
                written += os.write(fd, data[written:])
        except OSError as exc:  # EPIPE (Kiln side gone), EBADF (closed meanwhile)...
            _warn_once("write", f"could not write to events fd {fd}: {exc}")
            return False
    return True


def _step(value: Any) -> int:
    try:
        number = _number(value)
    except TypeError:
        number = None
    if number is None or isinstance(number, bool):
        raise TypeError(f"step must be an integer, got {value!r}")
    return int(number)


def _optional_number(name: str, value: Any) -> Any:
    try:
        return _number(value)
    except TypeError:
        raise TypeError(f"{name} must be a number, got {value!r}") from None


def progress(
    step: int,
    total_steps: Optional[int] = None,
    epoch: Optional[float] = None,
    total_epochs: Optional[float] = None,
    **metrics: Any,
) -> bool:
    """``{"type":"progress","step":…,"total_steps":…,"epoch":…,"total_epochs":…,"metrics":{…}}``.

    ``step`` counts completed optimisation steps, from 1. Optional fields left as ``None`` are
    omitted. Report at least every ``timeouts.stall`` (120 s by default) or Kiln kills the trainer.
    """
    event: Dict[str, Any] = {"type": "progress", "step": _step(step)}
    for name, value in (("total_steps", total_steps), ("epoch", epoch), ("total_epochs", total_epochs)):
        if value is not None:
            number = _optional_number(name, value)
            if number is not None:
                event[name] = number
    event["metrics"] = _metric_map(metrics, "progress")
    return _emit(event)


def checkpoint(path: "os.PathLike[str] | str", step: int, **metrics: Any) -> bool:
    """``{"type":"checkpoint","step":…,"path":…,"metrics":{…}}``.

    Call it only once the checkpoint is complete on disk (see :func:`kiln_trainer.atomic_checkpoint`,
    which calls it for you). ``path`` (file or directory) is made absolute.
    """
    event = {"type": "checkpoint", "step": _step(step), "path": _abspath(path), "metrics": _metric_map(metrics, "checkpoint")}
    return _emit(event)


def metrics(split: str, **values: Any) -> bool:
    """``{"type":"metrics","split":…,"values":{…}}``; ``split="validation"`` feeds promotion."""
    event = {"type": "metrics", "split": str(split), "values": _metric_map(values, "metrics")}
    return _emit(event)


def artifact(name: str, path: "os.PathLike[str] | str") -> bool:
    """``{"type":"artifact","name":…,"path":…}``; the one named ``model`` goes to the registry."""
    return _emit({"type": "artifact", "name": str(name), "path": _abspath(path)})
