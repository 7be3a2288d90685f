"""Helpers for the real-library tests: the example trainers run as Kiln runs them.

These run with the frameworks venv's python (``python/requirements-frameworks.txt``, installed by
``.ci/run`` at ``${XDG_CACHE_HOME:-~/.cache}/kiln/frameworks-venv``; ``scripts/test.mjs`` runs this
folder with it). Under another python every test here skips through ``pytest.importorskip``. (No
conftest.py here: a second module named ``conftest`` would shadow ``python/tests/conftest.py`` for the
tests that import from it; tests import the ``trainer_run`` fixture from this module instead.)

Each trainer gets Kiln's environment, fd 3 as the events pipe and stdin as a held-open pipe (the
conftest ``KilnProc``), and is stopped with SIGTERM or killed with SIGKILL as the supervisor does.
The same examples run under the real supervisor and GPU worker, through Kiln jobs on the dev server,
in test/frameworks.test.ts.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from conftest import REPO_ROOT, KilnProc, kiln_env

EXAMPLES = REPO_ROOT / "examples"
GRACE_MS = 10_000


def of(events: List[dict], kind: str) -> List[dict]:
    return [e for e in events if e["type"] == kind]


class Run:
    """One trainer attempt in ``work_dir``."""

    def __init__(self, proc: KilnProc, work_dir: Path):
        self.proc = proc
        self.work_dir = work_dir

    @property
    def events(self) -> List[dict]:
        return self.proc.events

    def wait(self, timeout: float = 120.0) -> int:
        return self.proc.wait(timeout)

    def wait_for_checkpoints(self, n: int, timeout: float = 120.0) -> List[dict]:
        return self.proc.wait_for(lambda evs: len(of(evs, "checkpoint")) >= n, timeout)

    def stop(self) -> None:
        """Kiln's stop (cancel, pause, worker shutdown): SIGTERM."""
        self.proc.send(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the end of the grace period, or a worker that vanished before the trainer could save."""
        self.proc.send(signal.SIGKILL)

    @property
    def log(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def progress_steps(self) -> List[int]:
        return [e["step"] for e in of(self.events, "progress")]


@pytest.fixture
def trainer_run(tmp_path) -> Callable[..., Run]:
    """``trainer_run(example, work_dir_name, params, resume_from=None, attempt=1) -> Run`` (killed at teardown)."""
    runs: List[Run] = []

    def start(example: str, name: str, params: Dict, resume_from: Optional[str] = None, attempt: int = 1) -> Run:
        wd = tmp_path / name
        wd.mkdir(parents=True, exist_ok=True)
        env = kiln_env(wd, params=params, KILN_RESUME_FROM=resume_from or "", KILN_ATTEMPT=str(attempt),
                       PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        run = Run(KilnProc([sys.executable, str(EXAMPLES / example / "train.py")], env, wd), wd)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.proc.kill()
