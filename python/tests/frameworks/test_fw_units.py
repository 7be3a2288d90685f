"""The kit's framework modules against the real libraries, in process (skipped where one is missing)."""

from __future__ import annotations

import os

import pytest


# -- kiln_trainer.xgboost ------------------------------------------------------------------------


@pytest.fixture
def xgb_data():
    np = pytest.importorskip("numpy")
    xgb = pytest.importorskip("xgboost")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = x[:, 0] * 2 + np.sin(x[:, 1]) + rng.normal(scale=0.1, size=400)
    return xgb, xgb.DMatrix(x[:300], label=y[:300]), xgb.DMatrix(x[300:], label=y[300:])


def test_xgboost_temp_name_keeps_json_so_checkpoints_load_back(xgb_data, events_pipe, tmp_path, no_signal_install):
    import kiln_trainer.xgboost

    xgb, dtrain, dval = xgb_data
    cb = kiln_trainer.xgboost.KilnCallback(rounds=6, every_n_rounds=3, checkpoint_dir=str(tmp_path))
    xgb.train({"max_depth": 2, "nthread": 1}, dtrain, num_boost_round=6, evals=[(dtrain, "train"), (dval, "val")],
              callbacks=[cb], verbose_eval=False)
    assert sorted(os.listdir(tmp_path)) == ["round-3.json", "round-6.json"]
    assert (tmp_path / "round-3.json").read_bytes()[:1] == b"{"  # JSON, not UBJSON behind a .json name
    assert xgb.Booster(model_file=str(tmp_path / "round-3.json")).num_boosted_rounds() == 3
    events = events_pipe()
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4, 5, 6] and all(e["total_steps"] == 6 for e in progress)
    assert set(progress[0]["metrics"]) == {"train_rmse", "val_rmse", "loss"}
    assert progress[0]["metrics"]["loss"] == progress[0]["metrics"]["train_rmse"]
    checkpoints = [e for e in events if e["type"] == "checkpoint"]
    assert [(e["step"], os.path.basename(e["path"])) for e in checkpoints] == [(3, "round-3.json"), (6, "round-6.json")]
    validation = [e for e in events if e["type"] == "metrics"]
    assert [list(e["values"]) for e in validation] == [["rmse"], ["rmse"]]  # once per checkpoint; final not repeated
    assert validation[-1]["values"]["rmse"] == progress[-1]["metrics"]["val_rmse"]


def test_xgboost_resume_adds_only_the_rounds_left(xgb_data, events_pipe, tmp_path, no_signal_install):
    import kiln_trainer.xgboost

    xgb, dtrain, dval = xgb_data
    params = {"max_depth": 3, "nthread": 1, "seed": 1}
    evals = [(dtrain, "train"), (dval, "validation")]
    full = kiln_trainer.xgboost.KilnCallback(rounds=8, every_n_rounds=4, checkpoint_dir=str(tmp_path / "a"))
    reference = xgb.train(params, dtrain, num_boost_round=full.rounds_left(None), evals=evals, callbacks=[full],
                          verbose_eval=False)
    events_pipe()
    ckpt = str(tmp_path / "a" / "round-4.json")
    cb = kiln_trainer.xgboost.KilnCallback(rounds=8, every_n_rounds=4, checkpoint_dir=str(tmp_path / "b"))
    assert cb.rounds_left(ckpt) == 4
    resumed = xgb.train(params, dtrain, num_boost_round=cb.rounds_left(ckpt), evals=evals, xgb_model=ckpt,
                        callbacks=[cb], verbose_eval=False)
    assert [e["step"] for e in events_pipe() if e["type"] == "progress"] == [5, 6, 7, 8]
    assert resumed.num_boosted_rounds() == 8
    assert (resumed.predict(dval) == reference.predict(dval)).all()


def test_xgboost_sigterm_saves_and_stops_the_loop(xgb_data, events_pipe, tmp_path, no_signal_install):
    import kiln_trainer.xgboost

    xgb, dtrain, _ = xgb_data

    class StopAt(xgb.callback.TrainingCallback):  # what the SIGTERM handler does, at round 3
        def after_iteration(self, model, epoch, evals_log):
            if model.num_boosted_rounds() == 2:
                no_signal_install._request_stop()
            return False

    cb = kiln_trainer.xgboost.KilnCallback(rounds=50, every_n_rounds=10, checkpoint_dir=str(tmp_path))
    booster = xgb.train({"nthread": 1}, dtrain, num_boost_round=50, evals=[(dtrain, "train")],
                        callbacks=[StopAt(), cb], verbose_eval=False)
    assert booster.num_boosted_rounds() == 2
    assert [(e["type"], e["step"]) for e in events_pipe()] == [("progress", 1), ("progress", 2), ("checkpoint", 2)]
    assert os.listdir(tmp_path) == ["round-2.json"]


def test_xgboost_invalid_arguments(xgb_data):
    import kiln_trainer.xgboost

    with pytest.raises(ValueError):
        kiln_trainer.xgboost.KilnCallback(rounds=0)
    with pytest.raises(ValueError):
        kiln_trainer.xgboost.KilnCallback(rounds=5, every_n_rounds=0)


# -- kiln_trainer.torch --------------------------------------------------------------------------


def _batches(loader):
    return [b[0].tolist() for b in loader]


def test_resumable_sampler_order_depends_on_seed_and_epoch_only():
    pytest.importorskip("torch")
    from kiln_trainer.torch import ResumableSampler

    a, b = ResumableSampler(20, seed=3), ResumableSampler(20, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(20))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(20))
    assert list(ResumableSampler(20, seed=4)) != first


@pytest.mark.parametrize("workers", [0, 2])
def test_resumable_loader_resumes_mid_epoch(workers):
    torch = pytest.importorskip("torch")
    from torch.utils.data import TensorDataset

    from kiln_trainer.torch import ResumableDataLoader

    ds = TensorDataset(torch.arange(50))
    full = ResumableDataLoader(ds, batch_size=8, seed=7, num_workers=workers)
    full.sampler.set_epoch(2)
    want = _batches(full)
    loader = ResumableDataLoader(ds, batch_size=8, seed=7, num_workers=workers)
    loader.sampler.set_epoch(2)
    it = iter(loader)
    seen = [next(it)[0].tolist() for _ in range(3)]
    state = loader.state_dict()  # workers prefetch ahead: the delivered count is what matters
    assert state == {"seed": 7, "epoch": 2, "consumed": 24}
    del it
    again = ResumableDataLoader(ds, batch_size=8, seed=7, num_workers=workers)
    again.load_state_dict(state)
    again.sampler.set_epoch(2)  # what Lightning does after restoring: the position is kept
    assert seen + _batches(again) == want
    again.sampler.set_epoch(3)  # a new epoch starts from its first batch
    assert len(_batches(again)) == 7


def test_sampler_state_in_a_plain_loop_and_seed_mismatch():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    from kiln_trainer.torch import ResumableDataLoader, ResumableSampler

    ds = TensorDataset(torch.arange(30))
    sampler = ResumableSampler(30, seed=1)
    loader = DataLoader(ds, batch_size=4, sampler=sampler)
    want = _batches(loader)
    it = iter(loader)
    head = [next(it)[0].tolist() for _ in range(2)]
    state = sampler.state_dict()
    assert state["consumed"] == 8
    fresh = ResumableSampler(30, seed=1)
    fresh.load_state_dict(state)
    assert head + _batches(DataLoader(ds, batch_size=4, sampler=fresh)) == want
    with pytest.raises(ValueError, match="seed"):
        ResumableSampler(30, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="shuffle"):
        ResumableDataLoader(ds, batch_size=4, shuffle=True)


# -- real transformers / lightning base classes ---------------------------------------------------


def test_hf_callback_is_a_real_trainer_callback():
    transformers = pytest.importorskip("transformers")
    import kiln_trainer.hf

    assert issubclass(kiln_trainer.hf.KilnCallback, transformers.TrainerCallback)


def test_lightning_callback_is_a_real_callback_and_sigterm_exception_is_system_exit():
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import kiln_trainer.lightning

    assert issubclass(kiln_trainer.lightning.KilnCallback, pl.Callback)
    assert issubclass(SIGTERMException, SystemExit)  # what on_exception relies on


def test_resumable_loader_is_stateful_for_lightning():
    pytest.importorskip("lightning")
    import torch
    from lightning.fabric.utilities.types import _Stateful
    from torch.utils.data import TensorDataset

    from kiln_trainer.torch import ResumableDataLoader

    assert isinstance(ResumableDataLoader(TensorDataset(torch.arange(4)), batch_size=2), _Stateful)
