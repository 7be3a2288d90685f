"""``kiln_trainer.hf.KilnCallback``.

``transformers`` is not installed in this environment (and torch is deliberately not installed), so
unless ``import transformers`` works these tests inject a minimal stand-in ``transformers`` module
into ``sys.modules`` that exposes ``TrainerCallback`` with the documented no-op event methods, and
drive the callback with stand-in ``args``/``state``/``control`` objects carrying the documented
attribute names (``TrainingArguments.output_dir``/``num_train_epochs``; ``TrainerState.global_step``/
``max_steps``/``epoch``/``num_train_epochs``/``is_world_process_zero``; ``TrainerControl.should_save``/
``should_training_stop``). A small loop mimics the order in which ``Trainer`` calls
``on_step_end`` -> save -> ``on_save``. If real transformers is importable, the same tests run
against the real ``TrainerCallback`` base class.
"""

from __future__ import annotations

import importlib
import sys
import types
from types import SimpleNamespace

import pytest

try:
    import transformers  # noqa: F401

    REAL_TRANSFORMERS = True
except ImportError:
    REAL_TRANSFORMERS = False


def _fake_transformers() -> types.ModuleType:
    mod = types.ModuleType("transformers")

    class TrainerCallback:  # the documented interface: every event is a no-op by default
        def on_init_end(self, args, state, control, **kwargs): pass
        def on_train_begin(self, args, state, control, **kwargs): pass
        def on_train_end(self, args, state, control, **kwargs): pass
        def on_epoch_begin(self, args, state, control, **kwargs): pass
        def on_epoch_end(self, args, state, control, **kwargs): pass
        def on_step_begin(self, args, state, control, **kwargs): pass
        def on_step_end(self, args, state, control, **kwargs): pass
        def on_evaluate(self, args, state, control, **kwargs): pass
        def on_save(self, args, state, control, **kwargs): pass
        def on_log(self, args, state, control, **kwargs): pass

    mod.TrainerCallback = TrainerCallback
    mod.__kiln_stand_in__ = True
    return mod


@pytest.fixture
def hf(monkeypatch, no_signal_install):
    if not REAL_TRANSFORMERS:
        monkeypatch.setitem(sys.modules, "transformers", _fake_transformers())
    monkeypatch.delitem(sys.modules, "kiln_trainer.hf", raising=False)
    module = importlib.import_module("kiln_trainer.hf")
    yield module
    sys.modules.pop("kiln_trainer.hf", None)


def make(tmp_path, step=10, world_zero=True):
    args = SimpleNamespace(output_dir=str(tmp_path / "checkpoints"), num_train_epochs=3.0)
    state = SimpleNamespace(global_step=step, max_steps=300, epoch=0.1 * step / 3, num_train_epochs=3,
                            is_world_process_zero=world_zero, log_history=[])
    control = SimpleNamespace(should_save=False, should_training_stop=False, should_log=False,
                              should_evaluate=False, should_epoch_stop=False)
    return args, state, control


def test_is_a_trainer_callback(hf):
    import transformers

    assert issubclass(hf.KilnCallback, transformers.TrainerCallback)
    assert REAL_TRANSFORMERS or getattr(transformers, "__kiln_stand_in__", False)


def test_on_log_reports_progress(hf, events_pipe, tmp_path):
    cb = hf.KilnCallback()
    args, state, control = make(tmp_path, step=30)
    cb.on_log(args, state, control, logs={"loss": 0.5, "grad_norm": 1.25, "learning_rate": 5e-5, "epoch": 0.33,
                                          "eval_loss": 9.0, "note": "text"})
    assert events_pipe() == [{"type": "progress", "step": 30, "total_steps": 300, "epoch": 1.0, "total_epochs": 3,
                              "metrics": {"loss": 0.5, "grad_norm": 1.25, "learning_rate": 5e-5}}]


def test_on_save_announces_the_checkpoint_dir(hf, events_pipe, tmp_path):
    cb = hf.KilnCallback()
    args, state, control = make(tmp_path, step=40)
    cb.on_log(args, state, control, logs={"loss": 0.25})
    events_pipe()
    cb.on_save(args, state, control)  # checkpoint-40 does not exist: nothing to announce
    assert events_pipe() == []
    (tmp_path / "checkpoints" / "checkpoint-40").mkdir(parents=True)
    cb.on_save(args, state, control)
    assert events_pipe() == [{"type": "checkpoint", "step": 40,
                              "path": str(tmp_path / "checkpoints" / "checkpoint-40"), "metrics": {"loss": 0.25}}]


def test_on_evaluate_reports_quality_metrics_once_under_the_users_names(hf, events_pipe, tmp_path):
    cb = hf.KilnCallback()
    args, state, control = make(tmp_path)
    # what Trainer.evaluate hands on_evaluate in transformers 5 (plus compute_metrics' accuracy)
    cb.on_evaluate(args, state, control, metrics={
        "eval_loss": 0.3, "eval_accuracy": 0.9, "eval_runtime": 1.5, "eval_samples_per_second": 120.0,
        "eval_steps_per_second": 15.0, "eval_model_preparation_time": 0.01, "eval_mem_cpu_alloc_delta": 4096,
        "epoch": 1.0})
    (event,) = events_pipe()
    assert event == {"type": "metrics", "split": "validation", "values": {"val_loss": 0.3, "accuracy": 0.9}}


def test_on_evaluate_with_only_runtime_keys_sends_nothing(hf, events_pipe, tmp_path):
    cb = hf.KilnCallback()
    args, state, control = make(tmp_path)
    cb.on_evaluate(args, state, control, metrics={"eval_runtime": 1.5, "eval_steps_per_second": 15.0, "epoch": 1.0})
    assert events_pipe() == []


def test_end_of_training_summary_adds_no_progress_metrics(hf, events_pipe, tmp_path):
    cb = hf.KilnCallback()
    args, state, control = make(tmp_path, step=40)
    state.epoch = 4.6875
    cb.on_log(args, state, control, logs={"loss": 0.25, "grad_norm": 0.5, "learning_rate": 1e-4, "epoch": 4.6875})
    cb.on_log(args, state, control, logs={"train_runtime": 12.5, "train_samples_per_second": 51.2,
                                          "train_steps_per_second": 3.2, "total_flos": 1.5e12, "train_loss": 0.7,
                                          "epoch": 4.6875})
    first, summary = events_pipe()
    assert first["metrics"] == {"loss": 0.25, "grad_norm": 0.5, "learning_rate": 1e-4}
    assert first["epoch"] == 5 and isinstance(first["epoch"], int)  # epoch 5/7 in progress, not 4.6875/7
    assert summary["metrics"] == {}
    # the checkpoint carries the last training metrics, not the summary
    (tmp_path / "checkpoints" / "checkpoint-40").mkdir(parents=True)
    cb.on_save(args, state, control)
    assert events_pipe()[0]["metrics"] == {"loss": 0.25, "grad_norm": 0.5, "learning_rate": 1e-4}


@pytest.mark.parametrize("epoch, shown", [(0.03125, 1), (1.0, 1), (1.0000001, 1), (1.5, 2), (3.0, 3)])
def test_epoch_is_the_one_in_progress(hf, events_pipe, tmp_path, epoch, shown):
    cb = hf.KilnCallback()
    args, state, control = make(tmp_path)
    state.epoch = epoch
    cb.on_log(args, state, control, logs={"loss": 1.0})
    assert events_pipe()[0]["epoch"] == shown


def test_other_ranks_report_nothing(hf, events_pipe, tmp_path):
    cb = hf.KilnCallback()
    args, state, control = make(tmp_path, world_zero=False)
    (tmp_path / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    cb.on_log(args, state, control, logs={"loss": 1.0})
    cb.on_save(args, state, control)
    cb.on_evaluate(args, state, control, metrics={"eval_loss": 1.0})
    cb.on_step_end(args, state, control)
    assert events_pipe() == []


def test_step_end_without_sigterm_changes_nothing(hf, events_pipe, tmp_path):
    cb = hf.KilnCallback(progress_every_s=3600)
    args, state, control = make(tmp_path)
    cb.on_log(args, state, control, logs={"loss": 1.0})
    result = cb.on_step_end(args, state, control)
    assert result is control
    assert control.should_save is False and control.should_training_stop is False
    assert len(events_pipe()) == 1  # only the on_log progress: the heartbeat is throttled


def test_step_end_heartbeat_between_logs(hf, events_pipe, tmp_path):
    cb = hf.KilnCallback(progress_every_s=0)
    args, state, control = make(tmp_path, step=7)
    cb.on_step_end(args, state, control)
    assert [(e["type"], e["step"], e["metrics"]) for e in events_pipe()] == [("progress", 7, {})]


def test_sigterm_saves_and_stops_in_a_trainer_like_loop(hf, events_pipe, tmp_path, no_signal_install):
    """Mimics Trainer's inner loop: on_step_end, then save if control.should_save, then on_save."""
    cb = hf.KilnCallback(progress_every_s=3600)
    args, state, control = make(tmp_path, step=0)
    for step in range(1, 11):
        state.global_step = step
        control.should_save = False  # CallbackHandler.on_step_end resets the flags first
        if step == 4:
            no_signal_install._request_stop()  # as the SIGTERM handler does
        cb.on_step_end(args, state, control)
        if control.should_save:
            (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
            cb.on_save(args, state, control)
        if control.should_training_stop:
            break
    assert state.global_step == 4
    assert control.should_save is True and control.should_training_stop is True
    assert [(e["type"], e["step"], e["path"]) for e in events_pipe() if e["type"] == "checkpoint"] == [
        ("checkpoint", 4, str(tmp_path / "checkpoints" / "checkpoint-4"))]


def test_importing_the_kit_does_not_need_transformers(run_py):
    p = run_py("import sys; sys.modules['transformers'] = None\n"
               "import kiln_trainer\n"
               "try:\n    import kiln_trainer.hf\nexcept ImportError:\n    print('hf needs transformers')\n",
               events=False)
    assert p.stdout.strip() == "hf needs transformers", p.stderr
