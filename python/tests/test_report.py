"""Events on fd 3: real pipes, real child processes, parsed lines."""

from __future__ import annotations

import json
import os
import textwrap

from conftest import base_env as _env
from kiln_trainer import report


def test_all_event_kinds_reach_fd3_as_json_lines(run_py, tmp_path):
    code = textwrap.dedent(f"""
        import kiln_trainer
        from kiln_trainer import report
        assert report.progress(120, 640, epoch=3, total_epochs=50, loss=0.018)
        assert report.checkpoint({str(tmp_path / 'ck' / 'step-120.ckpt')!r}, 120, loss=0.018)
        assert report.metrics("validation", val_loss=0.021, accuracy=0.97)
        assert report.artifact("model", "artifacts/model.json")
        assert report.progress(121)
    """)
    p = run_py(code, env=_env(KILN_EVENTS_FD="3"))
    assert p.proc.returncode == 0, p.stderr
    assert p.events == [
        {"type": "progress", "step": 120, "total_steps": 640, "epoch": 3, "total_epochs": 50, "metrics": {"loss": 0.018}},
        {"type": "checkpoint", "step": 120, "path": str(tmp_path / "ck" / "step-120.ckpt"), "metrics": {"loss": 0.018}},
        {"type": "metrics", "split": "validation", "values": {"val_loss": 0.021, "accuracy": 0.97}},
        {"type": "artifact", "name": "model", "path": str(tmp_path / "artifacts" / "model.json")},
        {"type": "progress", "step": 121, "metrics": {}},
    ]
    # one line per event, nothing else on the pipe
    assert len(p.lines) == 5 and all(line.startswith("{") for line in p.lines)


def test_default_fd_is_3_when_variable_unset(run_py):
    p = run_py("from kiln_trainer import report; assert report.progress(1, loss=1.5)", env=_env())
    assert p.proc.returncode == 0, p.stderr
    assert p.events == [{"type": "progress", "step": 1, "metrics": {"loss": 1.5}}]


def test_values_are_made_json_safe(run_py):
    code = textwrap.dedent("""
        import decimal, fractions
        from kiln_trainer import report

        class Scalar:  # stands in for a numpy scalar / 0-d torch tensor (numpy is not installed)
            def __init__(self, v): self.v = v
            def item(self): return self.v

        assert report.progress(Scalar(7), Scalar(70), epoch=1.5, loss=float("nan"), gnorm=float("inf"),
                               neg=float("-inf"), lr=Scalar(0.25), d=decimal.Decimal("0.5"),
                               f=fractions.Fraction(1, 4), n=3, flag=True, nested_nan=Scalar(float("nan")),
                               name="not-a-number")
    """)
    p = run_py(code, env=_env())
    assert p.proc.returncode == 0, p.stderr
    assert p.lines[0].count("NaN") == 0 and "Infinity" not in p.lines[0]
    (event,) = p.events
    assert event == {
        "type": "progress", "step": 7, "total_steps": 70, "epoch": 1.5,
        "metrics": {"loss": None, "gnorm": None, "neg": None, "lr": 0.25, "d": 0.5, "f": 0.25, "n": 3,
                    "flag": True, "nested_nan": None},
    }
    assert "'name'" in p.stderr and "dropped" in p.stderr  # told once why a value vanished


def test_noop_outside_kiln(run_py, tmp_path):
    code = textwrap.dedent("""
        from kiln_trainer import report
        results = [report.progress(1, loss=0.5), report.checkpoint("x", 1), report.metrics("validation", a=1),
                   report.artifact("model", "m"), report.events_fd()]
        print(results)
    """)
    # fd 3 not open at all, variable unset (running by hand)
    p = run_py(code, env=_env(), events=False)
    assert p.proc.returncode == 0, p.stderr
    assert p.stdout.strip() == "[False, False, False, False, None]"
    assert p.stderr == ""
    # variable set but fd 3 closed
    p = run_py(code, env=_env(KILN_EVENTS_FD="3"), events=False)
    assert p.stdout.strip() == "[False, False, False, False, None]"
    # variable set to empty: events off even though fd 3 is a pipe
    p = run_py(code, env=_env(KILN_EVENTS_FD=""), events=True)
    assert p.stdout.strip() == "[False, False, False, False, None]" and p.events == []


def test_unset_variable_never_writes_into_an_unrelated_fd3(run_py, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    code = textwrap.dedent(f"""
        import os
        fd = os.open({str(victim)!r}, os.O_WRONLY | os.O_APPEND)
        if fd != 3:
            os.dup2(fd, 3)
        from kiln_trainer import report
        print(report.progress(1, loss=0.5))
    """)
    p = run_py(code, env=_env(), events=False)
    assert p.stdout.strip() == "False", p.stderr
    assert victim.read_text() == "keep me\n"


def test_threads_never_interleave_lines(run_py):
    # Lines of ~6 KB (more than PIPE_BUF) from 8 threads: only the kit's lock keeps them whole.
    code = textwrap.dedent("""
        import threading
        from kiln_trainer import report
        metrics = {f"metric_with_a_long_name_{i:03d}": i * 0.5 for i in range(150)}
        def work(t):
            for s in range(100):
                assert report.progress(t * 1000 + s, **metrics)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        [th.start() for th in threads]
        [th.join() for th in threads]
    """)
    p = run_py(code, env=_env())
    assert p.proc.returncode == 0, p.stderr
    assert len(p.lines) == 800
    events = p.events  # every line parses
    assert len(p.lines[0]) > 4096
    assert sorted(e["step"] for e in events) == sorted(t * 1000 + s for t in range(8) for s in range(100))
    assert all(len(e["metrics"]) == 150 for e in events)


def test_oversized_line_is_dropped_with_a_warning(run_py):
    code = textwrap.dedent("""
        from kiln_trainer import report
        big = {f"m{i:06d}": 1.0 for i in range(8000)}
        print(report.progress(1, **big), report.progress(2, loss=1.0))
    """)
    p = run_py(code, env=_env())
    assert p.stdout.strip() == "False True"
    assert [e["step"] for e in p.events] == [2]
    assert "64 KiB" in p.stderr


def test_closed_reader_does_not_crash(monkeypatch):
    r, w = os.pipe()
    os.close(r)
    monkeypatch.setenv("KILN_EVENTS_FD", str(w))
    try:
        assert report.progress(1, loss=1.0) is False  # EPIPE swallowed (Python ignores SIGPIPE)
        assert report.progress(2, loss=1.0) is False
    finally:
        os.close(w)


def test_in_process_pipe_and_absolute_paths(events_pipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.checkpoint("checkpoints/step-3.json", 3)
    assert report.artifact("model", tmp_path / "artifacts" / "model.json")
    assert events_pipe() == [
        {"type": "checkpoint", "step": 3, "path": str(tmp_path / "checkpoints" / "step-3.json"), "metrics": {}},
        {"type": "artifact", "name": "model", "path": str(tmp_path / "artifacts" / "model.json")},
    ]
