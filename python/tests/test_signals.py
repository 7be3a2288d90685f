"""``should_stop()`` after a real SIGTERM sent to a child process."""

from __future__ import annotations

import signal
import sys
import textwrap
import time

from conftest import base_env


def _wait_line(p, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in p.stdout:
            return
        if p.proc.poll() is not None:
            break
        time.sleep(0.01)
    raise AssertionError(f"{text!r} not printed; stdout={p.stdout!r} stderr={p.stderr!r}")


def test_should_stop_after_sigterm(spawn):
    code = textwrap.dedent("""
        import time, kiln_trainer
        assert kiln_trainer.should_stop() is False   # installs the handler
        print("ready", flush=True)
        deadline = time.monotonic() + 10
        steps = 0
        while not kiln_trainer.should_stop() and time.monotonic() < deadline:
            steps += 1
            time.sleep(0.005)
        print("stopped" if kiln_trainer.should_stop() else "timeout", flush=True)
        raise SystemExit(0)
    """)
    p = spawn([sys.executable, "-c", code], env=base_env(), events=False)
    _wait_line(p, "ready")
    p.send(signal.SIGTERM)
    assert p.wait(10) == 0, p.stderr
    assert p.stdout.split() == ["ready", "stopped"]


def test_context_installs_the_handler_and_keeps_a_previous_one(spawn):
    code = textwrap.dedent("""
        import signal, time, kiln_trainer
        seen = []
        signal.signal(signal.SIGTERM, lambda s, f: seen.append("previous"))
        kiln_trainer.context(start_guard=False)
        print("ready", flush=True)
        deadline = time.monotonic() + 10
        while not kiln_trainer.should_stop() and time.monotonic() < deadline:
            time.sleep(0.005)
        print(kiln_trainer.should_stop(), seen, flush=True)
    """)
    p = spawn([sys.executable, "-c", code], env=base_env(), events=False)
    _wait_line(p, "ready")
    p.send(signal.SIGTERM)
    assert p.wait(10) == 0, p.stderr
    assert p.stdout.splitlines()[1] == "True ['previous']"


def test_wait_for_stop_returns_early_on_sigterm(spawn):
    code = textwrap.dedent("""
        import time, kiln_trainer
        kiln_trainer.should_stop()
        print("ready", flush=True)
        t = time.monotonic()
        stopped = kiln_trainer.wait_for_stop(30)
        print(stopped, round(time.monotonic() - t, 1) < 5, flush=True)
        print(kiln_trainer.wait_for_stop(0.01), flush=True)
    """)
    p = spawn([sys.executable, "-c", code], env=base_env(), events=False)
    _wait_line(p, "ready")
    p.send(signal.SIGTERM)
    assert p.wait(10) == 0, p.stderr
    assert p.stdout.splitlines()[1:] == ["True True", "True"]


def test_wait_for_stop_times_out_without_signal(run_py):
    p = run_py("import kiln_trainer; print(kiln_trainer.wait_for_stop(0.05), kiln_trainer.should_stop())",
               events=False)
    assert p.stdout.strip() == "False False", p.stderr
