"""The four framework examples as Kiln runs them: Kiln's environment, fd 3 events, SIGTERM, SIGKILL.

For each (HF Trainer tiny GPT-2, Lightning MLP, XGBoost, plain PyTorch loop): an uninterrupted run
completes and reports only model-quality metrics; a run stopped by SIGTERM after two checkpoints
saves, announces and exits 0 within the grace period, and its resume starts at checkpoint + 1 and
ends with exactly the uninterrupted run's metrics; a run whose process group is SIGKILLed (a frozen
or vanished worker, no chance to save) resumes from the last announced checkpoint just as exactly.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

from kilnrun import GRACE_MS, of, trainer_run  # noqa: F401  (trainer_run is a fixture)


@dataclass(frozen=True)
class Case:
    example: str
    module: str  # the framework import the example needs
    params: Dict  # small enough for ~20 s of training on 2 cores
    slow: Dict  # added for the interrupted run, so the signal lands mid-run
    steps: int
    validation: List[str]  # exactly the validation metric names reported
    ckpt_name: str  # checkpoint basename for step N
    last_ckpt: int  # the step of the uninterrupted run's last checkpoint
    progress: List[str] = field(default_factory=lambda: ["loss"])  # at least these in progress metrics


CASES = {
    "hf": Case("hf-trainer", "transformers", {}, {"step_delay_ms": 250}, 40, ["val_loss"], "checkpoint-{}", 40,
               ["loss", "grad_norm", "learning_rate"]),
    "lightning": Case("lightning-trainer", "lightning", {}, {"step_delay_ms": 150}, 64, ["val_loss", "val_acc", "acc"],
                      "step-{}.ckpt", 60),
    "xgboost": Case("xgboost-trainer", "xgboost", {}, {"round_delay_ms": 300}, 20, ["rmse"], "round-{}.json", 20,
                    ["loss", "train_rmse", "validation_rmse"]),
    "pytorch": Case("pytorch-trainer", "torch", {"epochs": 3}, {"step_delay_ms": 60}, 96, ["val_loss", "accuracy"],
                    "step-{}.pt", 96),
}

# Keys that say how fast or how big the run was, never how good the model is.
NOT_QUALITY = ("runtime", "per_second", "flos", "_mem_", "train_loss", "epoch")


def final(events: List[dict]) -> Dict:
    """What must match between runs: the last validation values and the last step's loss."""
    progress = [e for e in of(events, "progress") if "loss" in e["metrics"]]
    return {"validation": of(events, "metrics")[-1]["values"], "step": progress[-1]["step"],
            "loss": progress[-1]["metrics"]["loss"]}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs, one per case, shared by the tests of this module."""
    return {}


def reference(trainer_run, references, name: str, case: Case):
    if name not in references:
        t0 = time.monotonic()
        run = trainer_run(case.example, f"{name}-reference", case.params)
        rc = run.wait(240)
        assert rc == 0, run.log[-3000:]
        references[name] = (run.events, time.monotonic() - t0)
    return references[name]


@pytest.mark.parametrize("name", list(CASES))
def test_completes_with_only_quality_metrics(trainer_run, references, name):
    case = CASES[name]
    pytest.importorskip(case.module)
    events, seconds = reference(trainer_run, references, name, case)
    progress = of(events, "progress")
    steps = sorted({e["step"] for e in progress})
    if name == "hf":  # HF reports at logging_steps (5), plus the kit's heartbeat, which sends step 1
        assert steps[0] == 1 and {5, 10, 35, 40} <= set(steps) and steps[-1] == case.steps
    else:
        assert steps == list(range(1, case.steps + 1))
    assert all(e["total_steps"] == case.steps for e in progress)
    assert all(isinstance(e.get("epoch", 1), int) for e in progress)  # never HF's 4.6875
    progress_keys = set().union(*(e["metrics"] for e in progress))
    assert set(case.progress) <= progress_keys
    validation = of(events, "metrics")
    assert validation and all(e["split"] == "validation" for e in validation)
    for e in validation:
        assert sorted(e["values"]) == sorted(case.validation), e
    for key in progress_keys | set().union(*(e["values"] for e in validation)):
        assert not any(bad in key for bad in NOT_QUALITY), key
    checkpoints = of(events, "checkpoint")
    assert checkpoints and checkpoints[-1]["step"] == case.last_ckpt
    for e in checkpoints:
        assert os.path.basename(e["path"]) == case.ckpt_name.format(e["step"]) and os.path.exists(e["path"])
    (artifact,) = of(events, "artifact")
    assert artifact["name"] == "model" and os.path.exists(artifact["path"])
    print(f"{name}: uninterrupted run {seconds:.1f} s, final {final(events)}")


def _resume_and_compare(trainer_run, references, name, case, checkpoint, label):
    ref_events, _ = reference(trainer_run, references, name, case)
    assert os.path.basename(checkpoint["path"]) == case.ckpt_name.format(checkpoint["step"])
    resumed = trainer_run(case.example, f"{name}-{label}", case.params, resume_from=checkpoint["path"], attempt=2)
    assert resumed.wait(240) == 0, resumed.log[-3000:]
    steps = resumed.progress_steps()
    assert steps[0] == checkpoint["step"] + 1, steps[:3]
    assert max(steps) == case.steps
    got, want = final(resumed.events), final(ref_events)
    print(f"{name} {label}: resumed from step {checkpoint['step']}: final {got} (uninterrupted {want})")
    assert got == want  # bit for bit: the curve after the resume is the uninterrupted curve


@pytest.mark.parametrize("name", list(CASES))
def test_sigterm_after_two_checkpoints_saves_exits_0_and_resumes_exactly(trainer_run, references, name):
    case = CASES[name]
    pytest.importorskip(case.module)
    run = trainer_run(case.example, f"{name}-stopped", {**case.params, **case.slow})
    second = of(run.wait_for_checkpoints(2, timeout=180), "checkpoint")[1]
    t0 = time.monotonic()
    run.stop()
    rc = run.wait(GRACE_MS / 1000 + 30)
    exit_s = time.monotonic() - t0
    assert rc == 0, run.log[-3000:]
    assert exit_s < GRACE_MS / 1000, f"exited {exit_s:.1f} s after SIGTERM: killed at the end of the grace?"
    events = run.events
    last = of(events, "checkpoint")[-1]
    assert last["step"] >= second["step"] and last["step"] < case.steps, "the stop interrupted nothing"
    assert last["step"] == max(run.progress_steps())  # saved at the step it stopped at
    assert of(events, "artifact") == []  # an interrupted run registers no model
    assert "Traceback" not in run.log, run.log[-3000:]
    print(f"{name}: SIGTERM -> exit 0 in {exit_s:.2f} s, checkpoint at step {last['step']}")
    _resume_and_compare(trainer_run, references, name, case, last, "after-sigterm")


@pytest.mark.parametrize("name", ["xgboost", "pytorch"])
def test_sigkill_after_two_checkpoints_resumes_from_the_last_announced(trainer_run, references, name):
    case = CASES[name]
    pytest.importorskip(case.module)
    run = trainer_run(case.example, f"{name}-killed", {**case.params, **case.slow})
    second = of(run.wait_for_checkpoints(2, timeout=180), "checkpoint")[1]
    run.kill()
    assert run.wait(30) == -9
    announced = of(run.events, "checkpoint")[-1]
    assert announced["step"] >= second["step"]
    _resume_and_compare(trainer_run, references, name, case, announced, "after-sigkill")
