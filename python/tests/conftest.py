"""Shared helpers: run code as a Kiln trainer would be run, with fd 3 a real pipe.

``spawn(...)`` starts a child whose fd 3 is the write end of a pipe (through a tiny launcher that
dup2()s it to 3 and exec()s the real command), whose stdin is a pipe held open by the test (as the
Kiln supervisor does), and whose events are collected by a reader thread while it runs. Every child
is killed at teardown if a test left it running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

TESTS_DIR = Path(__file__).resolve().parent
PYTHON_DIR = TESTS_DIR.parent
REPO_ROOT = PYTHON_DIR.parent
EXAMPLE_TRAINER = REPO_ROOT / "examples" / "python-trainer" / "train.py"

# dup2 the inherited pipe to fd 3, then become the real command.
_LAUNCHER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def base_env(**extra: str) -> Dict[str, str]:
    """The parent's environment without any KILN_* variable, with the kit importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env["PYTHONPATH"] = str(PYTHON_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def kiln_env(work_dir: Path, params: Optional[dict] = None, **extra: str) -> Dict[str, str]:
    """The environment Kiln gives a trainer (docs/trainer-protocol.md), for ``work_dir``."""
    work_dir = Path(work_dir)
    env = base_env(
        KILN_PROTOCOL="1",
        KILN_JOB_ID="train-test-job",
        KILN_ATTEMPT="1",
        KILN_PARAMS=json.dumps(params or {}),
        KILN_WORK_DIR=str(work_dir),
        KILN_CHECKPOINT_DIR=str(work_dir / "checkpoints"),
        KILN_RESUME_FROM="",
        KILN_ARTIFACT_DIR=str(work_dir / "artifacts"),
        KILN_EVENTS_FD="3",
        CUDA_VISIBLE_DEVICES="",
    )
    env.update(extra)
    return env


class KilnProc:
    """A child process with fd 3 = events pipe, stdin = open pipe, stdout/stderr to files."""

    def __init__(self, argv: List[str], env: Dict[str, str], cwd: Path, events: bool = True, stdin=subprocess.PIPE):
        self.cwd = Path(cwd)
        self._out = open(self.cwd / f".child-{id(self)}.out", "w+b")
        self._err = open(self.cwd / f".child-{id(self)}.err", "w+b")
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader: Optional[threading.Thread] = None
        if events:
            r, w = os.pipe()
            argv = [sys.executable, "-c", _LAUNCHER, str(w), *argv]
            try:
                self.proc = subprocess.Popen(argv, env=env, cwd=str(cwd), stdin=stdin, stdout=self._out,
                                             stderr=self._err, pass_fds=(w,))
            finally:
                os.close(w)
            self._reader = threading.Thread(target=self._read, args=(r,), daemon=True)
            self._reader.start()
        else:
            self.proc = subprocess.Popen(argv, env=env, cwd=str(cwd), stdin=stdin, stdout=self._out, stderr=self._err)
            self._eof = True

    def _read(self, fd: int) -> None:
        buf = b""
        with os.fdopen(fd, "rb", buffering=0) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    break
                buf += chunk
                *complete, buf = buf.split(b"\n")
                with self._cond:
                    self.lines.extend(line.decode("utf-8") for line in complete)
                    self._cond.notify_all()
        with self._cond:
            if buf:
                self.lines.append(buf.decode("utf-8", "replace"))
            self._eof = True
            self._cond.notify_all()

    @property
    def events(self) -> List[dict]:
        with self._cond:
            return [json.loads(line) for line in self.lines]

    def wait_for(self, predicate: Callable[[List[dict]], bool], timeout: float = 10.0) -> List[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                events = [json.loads(line) for line in self.lines]
                if predicate(events):
                    return events
                left = deadline - time.monotonic()
                if left <= 0 or self._eof and self.proc.poll() is not None:
                    raise AssertionError(f"condition not met within {timeout}s; events={events[-5:]}; "
                                         f"stderr={self.stderr[-2000:]}")
                self._cond.wait(min(left, 0.1))

    def wait(self, timeout: float = 20.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        return rc

    def send(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def close_stdin(self) -> None:
        self.proc.stdin.close()

    @property
    def stdout(self) -> str:
        self._out.flush()
        return (self.cwd / f".child-{id(self)}.out").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        self._err.flush()
        return (self.cwd / f".child-{id(self)}.err").read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._out.close()
        self._err.close()


@pytest.fixture
def spawn(tmp_path):
    """``spawn(argv, env=..., cwd=..., events=True, stdin=PIPE) -> KilnProc``; all killed at teardown."""
    procs: List[KilnProc] = []

    def _spawn(argv, env=None, cwd=None, events=True, stdin=subprocess.PIPE) -> KilnProc:
        p = KilnProc(list(argv), env if env is not None else base_env(), Path(cwd or tmp_path), events, stdin)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        p.kill()


@pytest.fixture
def run_py(spawn, tmp_path):
    """Run a Python snippet as a child (fd 3 = events pipe by default) and wait for it."""

    def _run(code: str, env=None, events=True, stdin=subprocess.DEVNULL, timeout=20.0) -> KilnProc:
        p = spawn([sys.executable, "-c", code], env=env, events=events, stdin=stdin)
        p.wait(timeout)
        return p

    return _run


@pytest.fixture
def events_pipe(monkeypatch):
    """In-process: point KILN_EVENTS_FD at a fresh pipe; returns a function reading what arrived."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    monkeypatch.setenv("KILN_EVENTS_FD", str(w))

    def read() -> List[dict]:
        data = b""
        while True:
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        assert data == b"" or data.endswith(b"\n"), data
        return [json.loads(line) for line in data.decode().splitlines()]

    yield read
    os.close(r)
    os.close(w)


@pytest.fixture
def no_signal_install(monkeypatch):
    """Keep the kit from installing its SIGTERM handler in the pytest process; reset the stop flag."""
    from kiln_trainer import _stop

    monkeypatch.setattr(_stop, "_installed", True)
    _stop._reset()
    yield _stop
    _stop._reset()


# The kit itself, importable in-process without pip install.
if str(PYTHON_DIR) not in sys.path:
    sys.path.insert(0, str(PYTHON_DIR))
