"""``context()``: the Kiln environment as a frozen dataclass."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from . import report
from ._guard import guard_parent
from ._stop import install_sigterm_handler

PROTOCOL_VERSION = "1"


@dataclass(frozen=True)
class KilnContext:
    """What Kiln tells a trainer through its environment (docs/trainer-protocol.md).

    Outside Kiln (``in_kiln`` False) the same fields hold local defaults, so a script runs by hand.
    """

    job_id: str
    attempt: int
    params: Dict[str, Any]
    work_dir: str
    checkpoint_dir: str
    resume_from: Optional[str]
    artifact_dir: str
    events_fd: Optional[int]
    in_kiln: bool
    #: ``"train"``, or ``"evaluate"`` for the evaluation command (``KILN_MODE``).
    mode: str = "train"
    #: ``KILN_MODEL_PATH`` in evaluate mode, else None.
    model_path: Optional[str] = None
    #: ``CUDA_VISIBLE_DEVICES`` as Kiln set it (None when unset, "" on a CPU pool).
    cuda_visible_devices: Optional[str] = field(default=None, repr=False)


def _parse_params(raw: Optional[str]) -> Dict[str, Any]:
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"KILN_PARAMS is not valid JSON ({exc.msg} at position {exc.pos}): {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"KILN_PARAMS must be a JSON object, got {type(value).__name__}: {raw[:200]!r}")
    return value


def _parse_attempt(raw: Optional[str]) -> int:
    if raw is None or raw.strip() == "":
        return 1
    try:
        attempt = int(raw)
    except ValueError:
        raise ValueError(f"KILN_ATTEMPT must be a positive integer, got {raw!r}") from None
    if attempt < 1:
        raise ValueError(f"KILN_ATTEMPT must be a positive integer, got {raw!r}")
    return attempt


def _dir(env_name: str, default: str) -> str:
    path = os.path.abspath(os.environ.get(env_name) or default)
    os.makedirs(path, exist_ok=True)
    return path


def context(*, install_signal_handler: bool = True, start_guard: bool = True) -> KilnContext:
    """Parse the Kiln environment.

    Also installs the SIGTERM handler behind :func:`kiln_trainer.should_stop` and, inside Kiln,
    starts the parent-death guard (:func:`kiln_trainer.guard_parent`). The checkpoint and artifact
    dirs are created if missing. Raises ``ValueError`` naming the variable when ``KILN_PARAMS`` or
    ``KILN_ATTEMPT`` is malformed.
    """
    env = os.environ
    in_kiln = bool(env.get("KILN_PROTOCOL") or env.get("KILN_JOB_ID"))
    protocol = env.get("KILN_PROTOCOL")
    if protocol and protocol != PROTOCOL_VERSION:
        sys.stderr.write(f"kiln_trainer: KILN_PROTOCOL={protocol!r}, this kit speaks version {PROTOCOL_VERSION}\n")

    params = _parse_params(env.get("KILN_PARAMS"))
    attempt = _parse_attempt(env.get("KILN_ATTEMPT"))
    work_dir = os.path.abspath(env.get("KILN_WORK_DIR") or os.getcwd())
    checkpoint_dir = _dir("KILN_CHECKPOINT_DIR", "checkpoints")
    artifact_dir = _dir("KILN_ARTIFACT_DIR", "artifacts")
    resume_from = env.get("KILN_RESUME_FROM") or None
    mode = (env.get("KILN_MODE") or "train").strip() or "train"

    if install_signal_handler:
        install_sigterm_handler()
    if start_guard and in_kiln:
        guard_parent()

    return KilnContext(
        job_id=env.get("KILN_JOB_ID") or "local",
        attempt=attempt,
        params=params,
        work_dir=work_dir,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        artifact_dir=artifact_dir,
        events_fd=report.events_fd(),
        in_kiln=in_kiln,
        mode=mode,
        model_path=env.get("KILN_MODEL_PATH") or None,
        cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
    )
