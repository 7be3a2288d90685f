"""``kiln_trainer.lightning.KilnCallback``.

Neither ``lightning`` nor ``pytorch_lightning`` (nor torch) is installed here, so unless one of them
imports these tests inject a minimal stand-in ``lightning.pytorch`` (or ``pytorch_lightning``)
module into ``sys.modules`` exposing ``Callback``, and drive the callback with a stand-in trainer
carrying the documented ``Trainer`` attributes (``global_step``, ``current_epoch``, ``max_epochs``,
``max_steps``, ``estimated_stepping_batches``, ``callback_metrics`` with tensor-like values,
``is_global_zero``, ``sanity_checking``, ``should_stop``, ``save_checkpoint(path)``).
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import pytest

try:
    import lightning.pytorch  # noqa: F401

    REAL_LIGHTNING = True
except ImportError:
    REAL_LIGHTNING = False


class Callback:  # documented hooks, all no-ops
    def on_fit_start(self, trainer, pl_module): pass
    def on_train_start(self, trainer, pl_module): pass
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx): pass
    def on_validation_end(self, trainer, pl_module): pass
    def on_save_checkpoint(self, trainer, pl_module, checkpoint): pass
    def on_exception(self, trainer, pl_module, exception): pass


class Tensor:  # what callback_metrics holds: 0-d tensors with .item()
    def __init__(self, v):
        self.v = v

    def item(self):
        return self.v


class FakeTrainer:
    def __init__(self, max_steps=-1, max_epochs=2, batches=50, world_zero=True):
        self.global_step = 0
        self.current_epoch = 0
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.estimated_stepping_batches = batches
        self.callback_metrics = {}
        self.is_global_zero = world_zero
        self.sanity_checking = False
        self.should_stop = False
        self.received_sigterm = False  # Lightning >= 2's own SIGTERM flag
        self.saved = []
        self.weights_only = []

    def save_checkpoint(self, path, weights_only=None):
        self.saved.append(path)
        self.weights_only.append(weights_only)
        with open(path, "w") as f:
            f.write(f"step {self.global_step}")


def _install_fake(monkeypatch, package):
    if package == "lightning":
        top = types.ModuleType("lightning")
        sub = types.ModuleType("lightning.pytorch")
        sub.Callback = Callback
        top.pytorch = sub
        monkeypatch.setitem(sys.modules, "lightning", top)
        monkeypatch.setitem(sys.modules, "lightning.pytorch", sub)
    else:
        mod = types.ModuleType("pytorch_lightning")
        mod.Callback = Callback
        monkeypatch.setitem(sys.modules, "lightning", None)  # import lightning -> ImportError
        monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
        monkeypatch.setitem(sys.modules, "pytorch_lightning", mod)


def _load(monkeypatch):
    monkeypatch.delitem(sys.modules, "kiln_trainer.lightning", raising=False)
    module = importlib.import_module("kiln_trainer.lightning")
    return module


@pytest.fixture
def pl(monkeypatch, no_signal_install):
    if not REAL_LIGHTNING:
        _install_fake(monkeypatch, "lightning")
    yield _load(monkeypatch)
    sys.modules.pop("kiln_trainer.lightning", None)


def run_steps(cb, trainer, steps, metrics=None):
    for _ in range(steps):
        trainer.global_step += 1
        trainer.callback_metrics = dict(metrics or {"loss": Tensor(1.0 / trainer.global_step)})
        cb.on_train_batch_end(trainer, None, None, None, trainer.global_step - 1)


@pytest.mark.skipif(REAL_LIGHTNING, reason="stand-in only")
def test_is_a_lightning_callback(pl):
    assert issubclass(pl.KilnCallback, Callback)


@pytest.mark.skipif(REAL_LIGHTNING, reason="stand-in only")
def test_falls_back_to_pytorch_lightning(monkeypatch, no_signal_install):
    _install_fake(monkeypatch, "pytorch_lightning")
    module = _load(monkeypatch)
    assert issubclass(module.KilnCallback, sys.modules["pytorch_lightning"].Callback)
    sys.modules.pop("kiln_trainer.lightning", None)


def test_progress_per_optimiser_step(pl, events_pipe, tmp_path):
    cb = pl.KilnCallback(checkpoint_dir=str(tmp_path))
    trainer = FakeTrainer(max_epochs=2, batches=50)
    cb.on_fit_start(trainer, None)
    cb.on_train_start(trainer, None)
    run_steps(cb, trainer, 1, {"loss": Tensor(0.5), "val_loss": Tensor(0.7), "acc": Tensor(float("nan"))})
    cb.on_train_batch_end(trainer, None, None, None, 1)  # grad accumulation: same global_step again
    assert events_pipe() == [{"type": "progress", "step": 1, "total_steps": 50, "epoch": 1, "total_epochs": 2,
                              "metrics": {"loss": 0.5, "acc": None}}]
    assert trainer.saved == [] and trainer.should_stop is False


def test_max_steps_wins_over_estimate(pl, events_pipe, tmp_path):
    cb = pl.KilnCallback(checkpoint_dir=str(tmp_path))
    trainer = FakeTrainer(max_steps=20, max_epochs=-1, batches=float("inf"))
    cb.on_train_start(trainer, None)
    trainer.current_epoch = 3
    run_steps(cb, trainer, 1)
    (event,) = events_pipe()
    assert event["total_steps"] == 20 and event["epoch"] == 4 and "total_epochs" not in event


def test_periodic_checkpoints_are_atomic_and_announced(pl, events_pipe, tmp_path):
    cb = pl.KilnCallback(every_n_steps=3, checkpoint_dir=str(tmp_path / "ck"))
    trainer = FakeTrainer()
    cb.on_train_start(trainer, None)
    run_steps(cb, trainer, 7)
    checkpoints = [e for e in events_pipe() if e["type"] == "checkpoint"]
    assert [(e["step"], e["path"]) for e in checkpoints] == [
        (3, str(tmp_path / "ck" / "step-3.ckpt")), (6, str(tmp_path / "ck" / "step-6.ckpt"))]
    assert checkpoints[0]["metrics"] == {"loss": pytest.approx(1 / 3)}
    # Lightning wrote to a temp name; the final names appear only after the rename
    assert all(os.path.basename(p).startswith(".step-") for p in trainer.saved)
    assert sorted(os.listdir(tmp_path / "ck")) == ["step-3.ckpt", "step-6.ckpt"]
    assert (tmp_path / "ck" / "step-6.ckpt").read_text() == "step 6"
    assert trainer.weights_only == [False, False]  # set, so Lightning logs no "weights_only was not set"


def test_sigterm_saves_announces_and_stops(pl, events_pipe, tmp_path, no_signal_install):
    cb = pl.KilnCallback(every_n_steps=5, checkpoint_dir=str(tmp_path))
    trainer = FakeTrainer()
    cb.on_train_start(trainer, None)
    run_steps(cb, trainer, 4)
    no_signal_install._request_stop()
    run_steps(cb, trainer, 1)  # step 5: due anyway, and stop -> saved once
    assert trainer.should_stop is True
    events = events_pipe()
    assert [(e["step"], e["path"]) for e in events if e["type"] == "checkpoint"] == [(5, str(tmp_path / "step-5.ckpt"))]
    assert len(trainer.saved) == 1 and (tmp_path / "step-5.ckpt").read_text() == "step 5"


def test_validation_metrics(pl, events_pipe, tmp_path):
    cb = pl.KilnCallback(checkpoint_dir=str(tmp_path))
    trainer = FakeTrainer()
    trainer.callback_metrics = {"loss": Tensor(0.4), "val_loss": Tensor(0.3), "val_acc": Tensor(0.8),
                                "val/f1": Tensor(0.7)}
    trainer.sanity_checking = True
    cb.on_validation_end(trainer, None)
    assert events_pipe() == []  # sanity check is not a validation result
    trainer.sanity_checking = False
    cb.on_validation_end(trainer, None)
    cb.on_save_checkpoint(trainer, None, {})  # same values: not sent again
    assert events_pipe() == [{"type": "metrics", "split": "validation",
                              "values": {"val_loss": 0.3, "val_acc": 0.8, "acc": 0.8, "val/f1": 0.7, "f1": 0.7}}]
    trainer.callback_metrics["val_loss"] = Tensor(0.2)
    cb.on_save_checkpoint(trainer, None, {})
    assert events_pipe()[0]["values"]["val_loss"] == 0.2


def test_other_ranks_report_nothing(pl, events_pipe, tmp_path, no_signal_install):
    cb = pl.KilnCallback(every_n_steps=1, checkpoint_dir=str(tmp_path))
    trainer = FakeTrainer(world_zero=False)
    trainer.save_checkpoint = lambda path, weights_only=None: trainer.saved.append(path)  # non-zero ranks write nothing
    cb.on_train_start(trainer, None)
    run_steps(cb, trainer, 2)
    trainer.callback_metrics = {"val_loss": Tensor(0.1)}
    cb.on_validation_end(trainer, None)
    assert events_pipe() == []
    assert trainer.saved == [str(tmp_path / "step-1.ckpt"), str(tmp_path / "step-2.ckpt")]


def test_invalid_every_n_steps(pl):
    with pytest.raises(ValueError):
        pl.KilnCallback(every_n_steps=0)


def test_sigterm_seen_by_lightning_saves_without_asking_for_a_stop(pl, events_pipe, tmp_path, no_signal_install):
    """Lightning 2.x chains its own SIGTERM handler and raises SIGTERMException after this batch: the
    callback saves first, and does not set should_stop (that would start an extra validation pass)."""
    cb = pl.KilnCallback(checkpoint_dir=str(tmp_path))
    trainer = FakeTrainer()
    cb.on_train_start(trainer, None)
    run_steps(cb, trainer, 3)
    no_signal_install._request_stop()
    trainer.received_sigterm = True
    run_steps(cb, trainer, 1)
    assert trainer.should_stop is False
    checkpoints = [(e["step"], e["path"]) for e in events_pipe() if e["type"] == "checkpoint"]
    assert checkpoints == [(4, str(tmp_path / "step-4.ckpt"))]


class SIGTERMException(SystemExit):  # lightning.pytorch.utilities.exceptions.SIGTERMException
    pass


def test_sigterm_noticed_elsewhere_saves_in_on_exception(pl, events_pipe, tmp_path, no_signal_install):
    """SIGTERM after this step's on_train_batch_end (e.g. during validation): Lightning raises from
    where it is; on_exception saves the step it stopped at, once."""
    cb = pl.KilnCallback(every_n_steps=2, checkpoint_dir=str(tmp_path))
    trainer = FakeTrainer()
    cb.on_train_start(trainer, None)
    run_steps(cb, trainer, 3)
    cb.on_exception(trainer, None, SIGTERMException())  # no SIGTERM seen by the kit: not a stop
    assert [e["step"] for e in events_pipe() if e["type"] == "checkpoint"] == [2]
    no_signal_install._request_stop()
    cb.on_exception(trainer, None, RuntimeError("a crash is not a stop"))
    cb.on_exception(trainer, None, SIGTERMException())
    cb.on_exception(trainer, None, SIGTERMException())
    assert [e["step"] for e in events_pipe() if e["type"] == "checkpoint"] == [3]
    assert sorted(os.listdir(tmp_path)) == ["step-2.ckpt", "step-3.ckpt"]
