"""Parent-death guard: stdin EOF (the supervisor died) ends the trainer promptly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import kiln_trainer
from conftest import base_env, kiln_env
from test_signals import _wait_line

SLEEPER = textwrap.dedent("""
    import time, kiln_trainer
    {setup}
    print("ready", started, flush=True)
    time.sleep({sleep})
    print("survived", flush=True)
""")


def test_stdin_eof_exits_promptly(spawn):
    code = SLEEPER.format(setup="started = kiln_trainer.guard_parent()", sleep=30)
    p = spawn([sys.executable, "-c", code], env=base_env(), events=False, stdin=subprocess.PIPE)
    _wait_line(p, "ready")
    assert "ready True" in p.stdout
    t = time.monotonic()
    p.close_stdin()
    assert p.wait(5) == kiln_trainer.PARENT_GONE_EXIT_CODE
    assert time.monotonic() - t < 3
    assert "survived" not in p.stdout
    assert "supervisor is gone" in p.stderr


def test_context_starts_the_guard_inside_kiln(spawn, tmp_path):
    code = SLEEPER.format(setup="kiln_trainer.context(); started = True", sleep=30)
    p = spawn([sys.executable, "-c", code], env=kiln_env(tmp_path), stdin=subprocess.PIPE)
    _wait_line(p, "ready")
    p.close_stdin()
    assert p.wait(5) == kiln_trainer.PARENT_GONE_EXIT_CODE


def test_data_on_stdin_is_not_eof(spawn):
    code = SLEEPER.format(setup="started = kiln_trainer.guard_parent()", sleep=30)
    p = spawn([sys.executable, "-c", code], env=base_env(), events=False, stdin=subprocess.PIPE)
    _wait_line(p, "ready")
    p.proc.stdin.write(b"hello\n")
    p.proc.stdin.flush()
    time.sleep(0.2)
    assert p.proc.poll() is None  # still running
    p.close_stdin()
    assert p.wait(5) == kiln_trainer.PARENT_GONE_EXIT_CODE


def test_no_guard_when_stdin_is_dev_null(run_py):
    code = SLEEPER.format(setup="started = kiln_trainer.guard_parent()", sleep=0)
    p = run_py(code, events=False, stdin=subprocess.DEVNULL)
    assert p.proc.returncode == 0, p.stderr
    assert p.stdout.split() == ["ready", "False", "survived"]


def test_no_guard_outside_kiln_even_with_a_pipe(spawn):
    code = SLEEPER.format(setup="kiln_trainer.context(); import threading; "
                                "started = any(t.name == 'kiln-parent-guard' for t in threading.enumerate())",
                          sleep=0.3)
    p = spawn([sys.executable, "-c", code], env=base_env(), events=False, stdin=subprocess.PIPE)
    _wait_line(p, "ready")
    p.close_stdin()
    assert p.wait(5) == 0, p.stderr
    assert p.stdout.split() == ["ready", "False", "survived"]
