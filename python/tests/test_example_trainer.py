"""The example trainer (examples/python-trainer/train.py) run end to end as Kiln runs it."""

from __future__ import annotations

import json
import shutil
import signal
import sys

import pytest

from conftest import EXAMPLE_TRAINER, base_env, kiln_env

SMALL = {"epochs": 3, "steps_per_epoch": 10, "batch_size": 16, "lr": 0.2, "seed": 7}


def run_trainer(spawn, work_dir, params, timeout=30, **env):
    p = spawn([sys.executable, str(EXAMPLE_TRAINER)], env=kiln_env(work_dir, params=params, **env), cwd=work_dir)
    rc = p.wait(timeout)
    return p, rc


def of(events, kind):
    return [e for e in events if e["type"] == kind]


@pytest.fixture
def work(tmp_path):
    def make(name):
        d = tmp_path / name
        d.mkdir()
        return d

    return make


def test_completes_with_the_full_event_stream(spawn, work):
    wd = work("full")
    p, rc = run_trainer(spawn, wd, {})  # defaults: 5 epochs x 20 steps, batch 32
    assert rc == 0, p.stderr
    events = p.events
    progress = of(events, "progress")
    assert [e["step"] for e in progress] == list(range(1, 101))
    assert all(e["total_steps"] == 100 and e["total_epochs"] == 5 for e in progress)
    assert [e["epoch"] for e in progress[::20]] == [1, 2, 3, 4, 5]
    first, last = progress[0]["metrics"]["loss"], progress[-1]["metrics"]["loss"]
    assert last < first  # it learns

    validation = of(events, "metrics")
    assert len(validation) == 5 and all(e["split"] == "validation" for e in validation)
    assert all(set(e["values"]) == {"val_loss", "accuracy"} for e in validation)
    assert validation[-1]["values"]["val_loss"] < validation[0]["values"]["val_loss"]
    assert validation[-1]["values"]["accuracy"] > 0.85

    checkpoints = of(events, "checkpoint")
    assert [e["step"] for e in checkpoints] == [20, 40, 60, 80, 100]
    for e in checkpoints:
        assert e["path"] == str(wd / "checkpoints" / f"step-{e['step']}.json")
        assert json.loads((wd / "checkpoints" / f"step-{e['step']}.json").read_text())["step"] == e["step"]
        assert "loss" in e["metrics"]
    # each checkpoint is announced after the progress of its step
    idx = {id(e): i for i, e in enumerate(events)}
    step20 = next(e for e in progress if e["step"] == 20)
    assert idx[id(checkpoints[0])] > idx[id(step20)]

    (artifact,) = of(events, "artifact")
    assert artifact == {"type": "artifact", "name": "model", "path": str(wd / "artifacts" / "model.json")}
    model = json.loads((wd / "artifacts" / "model.json").read_text())
    assert len(model["weights"]) == 10 and model["steps"] == 100
    assert model["metrics"] == validation[-1]["values"]
    assert events[-1] == artifact
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == [f"step-{s}.json" for s in (100, 20, 40, 60, 80)]


def test_resume_is_exact(spawn, work):
    full_dir = work("uninterrupted")
    p, rc = run_trainer(spawn, full_dir, SMALL)
    assert rc == 0, p.stderr
    full_losses = {e["step"]: e["metrics"]["loss"] for e in of(p.events, "progress")}
    full_model = json.loads((full_dir / "artifacts" / "model.json").read_text())

    # a fresh attempt in another work dir, resuming from the step-10 checkpoint
    resumed_dir = work("resumed")
    (resumed_dir / "checkpoints").mkdir()
    ckpt = resumed_dir / "checkpoints" / "step-10.json"
    shutil.copy(full_dir / "checkpoints" / "step-10.json", ckpt)
    p, rc = run_trainer(spawn, resumed_dir, SMALL, KILN_RESUME_FROM=str(ckpt), KILN_ATTEMPT="2")
    assert rc == 0, p.stderr
    progress = of(p.events, "progress")
    assert progress[0]["step"] == 11
    assert [e["step"] for e in progress] == list(range(11, 31))
    assert {e["step"]: e["metrics"]["loss"] for e in progress} == {s: full_losses[s] for s in range(11, 31)}
    model = json.loads((resumed_dir / "artifacts" / "model.json").read_text())
    assert model["weights"] == full_model["weights"] and model["bias"] == full_model["bias"]
    assert model["metrics"] == full_model["metrics"]


def test_sigterm_checkpoints_and_exits_0_then_resumes_exactly(spawn, work):
    params = {**SMALL, "step_delay_ms": 40}
    full_dir = work("reference")
    p, rc = run_trainer(spawn, full_dir, SMALL)
    assert rc == 0, p.stderr
    reference = json.loads((full_dir / "artifacts" / "model.json").read_text())

    wd = work("interrupted")
    p = spawn([sys.executable, str(EXAMPLE_TRAINER)], env=kiln_env(wd, params=params), cwd=wd)
    p.wait_for(lambda evs: any(e["type"] == "progress" and e["step"] >= 4 for e in evs))
    p.send(signal.SIGTERM)
    assert p.wait(10) == 0, p.stderr
    events = p.events
    last_step = of(events, "progress")[-1]["step"]
    assert last_step < 30, "SIGTERM arrived after the run finished; the test did not interrupt anything"
    checkpoint = of(events, "checkpoint")[-1]
    assert checkpoint["step"] == last_step
    assert events[-1] == checkpoint  # the checkpoint is the last thing said
    assert of(events, "artifact") == []  # an interrupted run registers no model
    saved = json.loads(open(checkpoint["path"]).read())
    assert saved["step"] == last_step

    resumed = work("resumed")
    p, rc = run_trainer(spawn, resumed, params | {"step_delay_ms": 0}, KILN_RESUME_FROM=checkpoint["path"])
    assert rc == 0, p.stderr
    assert of(p.events, "progress")[0]["step"] == last_step + 1
    model = json.loads((resumed / "artifacts" / "model.json").read_text())
    assert model["weights"] == reference["weights"] and model["bias"] == reference["bias"]


@pytest.mark.parametrize("params, needle", [
    ({"lr": -1}, "lr"),
    ({"epochs": "five"}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"steps_per_epoch": 2.5}, "steps_per_epoch"),
    ({"step_delay_ms": -5}, "step_delay_ms"),
])
def test_invalid_params_exit_2(spawn, work, params, needle):
    wd = work("bad")
    p, rc = run_trainer(spawn, wd, params)
    assert rc == 2
    assert "invalid params" in p.stderr and needle in p.stderr
    assert p.events == []


def test_malformed_kiln_params_exit_2(spawn, work):
    wd = work("malformed")
    p = spawn([sys.executable, str(EXAMPLE_TRAINER)], env=kiln_env(wd, KILN_PARAMS="{oops"), cwd=wd)
    assert p.wait(10) == 2
    assert "KILN_PARAMS" in p.stderr


def test_evaluate_mode(spawn, work):
    wd = work("train")
    p, rc = run_trainer(spawn, wd, SMALL)
    assert rc == 0, p.stderr
    final = of(p.events, "metrics")[-1]["values"]
    model_path = of(p.events, "artifact")[0]["path"]

    p, rc = run_trainer(spawn, wd, SMALL, KILN_MODE="evaluate", KILN_MODEL_PATH=model_path)
    assert rc == 0, p.stderr
    assert p.events == [{"type": "metrics", "split": "validation", "values": final}]

    p, rc = run_trainer(spawn, wd, SMALL, KILN_MODE="evaluate")
    assert rc == 2 and "KILN_MODEL_PATH" in p.stderr


def test_runs_by_hand_without_kiln(spawn, work):
    wd = work("by-hand")
    p = spawn([sys.executable, str(EXAMPLE_TRAINER)], env=base_env(), cwd=wd, events=False,
              stdin=__import__("subprocess").DEVNULL)
    assert p.wait(30) == 0, p.stderr
    assert (wd / "artifacts" / "model.json").exists()
    assert (wd / "checkpoints" / "step-100.json").exists()
