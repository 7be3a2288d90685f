"""``kiln_trainer.context()``: Kiln env parsing and local defaults."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest

from conftest import base_env, kiln_env
from kiln_trainer import context

KILN_VARS = ["KILN_PROTOCOL", "KILN_JOB_ID", "KILN_ATTEMPT", "KILN_PARAMS", "KILN_WORK_DIR", "KILN_CHECKPOINT_DIR",
             "KILN_RESUME_FROM", "KILN_ARTIFACT_DIR", "KILN_EVENTS_FD", "KILN_MODE", "KILN_MODEL_PATH"]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in KILN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def ctx():  # in-process: never install a SIGTERM handler in pytest or start a stdin reader
    return context(install_signal_handler=False, start_guard=False)


def test_defaults_outside_kiln(clean_env, tmp_path):
    c = ctx()
    assert c.job_id == "local"
    assert c.attempt == 1
    assert c.params == {}
    assert c.work_dir == str(tmp_path)
    assert c.checkpoint_dir == str(tmp_path / "checkpoints") and (tmp_path / "checkpoints").is_dir()
    assert c.artifact_dir == str(tmp_path / "artifacts") and (tmp_path / "artifacts").is_dir()
    assert c.resume_from is None
    assert c.in_kiln is False
    assert c.mode == "train" and c.model_path is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.job_id = "other"  # type: ignore[misc]


def test_params_from_env_outside_kiln(clean_env):
    clean_env.setenv("KILN_PARAMS", '{"lr": 0.5, "layers": [64, 64], "name": "x"}')
    c = ctx()
    assert c.params == {"lr": 0.5, "layers": [64, 64], "name": "x"}
    assert c.in_kiln is False


def test_full_kiln_environment(clean_env, tmp_path):
    env = kiln_env(tmp_path / "job", params={"epochs": 3}, KILN_ATTEMPT="4",
                   KILN_RESUME_FROM=str(tmp_path / "job" / "checkpoints" / "step-20.json"),
                   KILN_MODE="evaluate", KILN_MODEL_PATH="/m/model.json")
    for name in KILN_VARS + ["CUDA_VISIBLE_DEVICES"]:
        if name in env:
            clean_env.setenv(name, env[name])
    c = ctx()
    assert c.in_kiln is True
    assert c.job_id == "train-test-job"
    assert c.attempt == 4
    assert c.params == {"epochs": 3}
    assert c.work_dir == str(tmp_path / "job")
    assert c.checkpoint_dir == str(tmp_path / "job" / "checkpoints") and (tmp_path / "job" / "checkpoints").is_dir()
    assert c.artifact_dir == str(tmp_path / "job" / "artifacts") and (tmp_path / "job" / "artifacts").is_dir()
    assert c.resume_from == str(tmp_path / "job" / "checkpoints" / "step-20.json")
    assert c.mode == "evaluate" and c.model_path == "/m/model.json"


def test_empty_resume_from_is_none(clean_env):
    clean_env.setenv("KILN_RESUME_FROM", "")
    clean_env.setenv("KILN_PARAMS", "")
    c = ctx()
    assert c.resume_from is None and c.params == {}


@pytest.mark.parametrize("raw", ["{not json", '{"lr": 0.1', "[1, 2]", '"a string"', "42"])
def test_malformed_params_raise_a_clear_error(clean_env, raw):
    clean_env.setenv("KILN_PARAMS", raw)
    with pytest.raises(ValueError, match="KILN_PARAMS"):
        ctx()


@pytest.mark.parametrize("raw", ["two", "0", "-1", "1.5"])
def test_malformed_attempt_raises_a_clear_error(clean_env, raw):
    clean_env.setenv("KILN_ATTEMPT", raw)
    with pytest.raises(ValueError, match="KILN_ATTEMPT"):
        ctx()


def test_context_in_a_kiln_child(run_py, tmp_path):
    """As Kiln runs it: events fd seen, SIGTERM handler installed, parent guard running."""
    code = textwrap.dedent("""
        import json, signal, threading
        import kiln_trainer
        c = kiln_trainer.context()
        print(json.dumps({
            "events_fd": c.events_fd, "in_kiln": c.in_kiln, "attempt": c.attempt, "params": c.params,
            "handler": getattr(signal.getsignal(signal.SIGTERM), "__kiln__", False),
            "guard": any(t.name == "kiln-parent-guard" for t in threading.enumerate()),
        }))
    """)
    import subprocess

    p = run_py(code, env=kiln_env(tmp_path, params={"lr": 0.2}, KILN_ATTEMPT="2"), stdin=subprocess.PIPE)
    assert p.proc.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"events_fd": 3, "in_kiln": True, "attempt": 2, "params": {"lr": 0.2},
                                    "handler": True, "guard": True}


def test_context_by_hand_has_no_events_fd(run_py):
    code = "import kiln_trainer; c = kiln_trainer.context(); print(c.events_fd, c.in_kiln, c.job_id)"
    p = run_py(code, env=base_env(), events=False)
    assert p.stdout.strip() == "None False local", p.stderr
