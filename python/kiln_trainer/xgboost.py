"""XGBoost integration: ``xgboost.train(..., callbacks=[KilnCallback(...)])``. Importing this module
imports xgboost.

    import kiln_trainer, kiln_trainer.xgboost, xgboost as xgb

    ctx = kiln_trainer.context()
    kiln = kiln_trainer.xgboost.KilnCallback(rounds=200, every_n_rounds=20)
    booster = xgb.train(params, dtrain, num_boost_round=kiln.rounds_left(ctx.resume_from),
                        evals=[(dtrain, "train"), (dval, "validation")],
                        xgb_model=ctx.resume_from, callbacks=[kiln])
    if kiln_trainer.should_stop():
        raise SystemExit(0)            # SIGTERM: round-N.json saved and announced

What it does (XGBoost trains in one process: no ranks here):

* ``after_iteration`` -> ``progress`` per boosting round: ``step`` = rounds in the model
  (``num_boosted_rounds()``, so a resumed run goes on from the checkpoint's round + 1),
  ``total_steps=rounds``, and every eval metric as ``<set>_<metric>`` (``train_rmse``,
  ``validation_rmse``), plus ``loss`` = the first set's last metric (what Kiln shows as the loss
  and retention ranks by default).
* Every ``every_n_rounds`` rounds, at the last round and after SIGTERM: ``<checkpoint_dir>/round-N.json``
  written by ``booster.save_model`` through ``kiln_trainer.atomic_checkpoint`` (JSON, because the
  temp name keeps the ``.json`` suffix) and announced, after a validation ``metrics`` event.
* After SIGTERM ``after_iteration`` returns True, so ``xgb.train`` returns the booster at once.
* ``after_training`` -> the validation set's final metrics as ``metrics`` ``validation``, by
  XGBoost's names (``rmse``, ``logloss``, ``auc``...). The validation set is ``validation_set`` if
  given, else the one named ``validation``/``valid``/``val``/``eval``/``test``, else the last of two
  or more sets.

Resume: ``xgb.train`` adds ``num_boost_round`` rounds to ``xgb_model``, so pass
``rounds_left(ctx.resume_from)``. The result equals an uninterrupted run when the rounds are
deterministic (XGBoost's default: no ``subsample``/``colsample_*`` below 1): the sampling RNG is not
part of a saved model.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import xgboost
from xgboost.callback import TrainingCallback

from . import report
from ._atomic import atomic_checkpoint
from ._metrics import numeric
from ._stop import install_sigterm_handler, should_stop

__all__ = ["KilnCallback"]

_VALIDATION_NAMES = ("validation", "valid", "val", "eval", "test")


def _last(values: Any) -> Any:
    """The latest value of one metric's history (a float, or ``(mean, std)`` in ``xgb.cv``)."""
    value = values[-1] if isinstance(values, (list, tuple)) and values else values
    return value[0] if isinstance(value, tuple) else value


class KilnCallback(TrainingCallback):
    """Reports XGBoost rounds to Kiln, checkpoints every N rounds in JSON, stops on SIGTERM."""

    def __init__(self, rounds: int, every_n_rounds: Optional[int] = None, checkpoint_dir: Optional[str] = None,
                 validation_set: Optional[str] = None) -> None:
        super().__init__()
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        if every_n_rounds is not None and every_n_rounds < 1:
            raise ValueError("every_n_rounds must be >= 1")
        self.rounds = rounds
        self.every_n_rounds = every_n_rounds
        self.validation_set = validation_set
        self._checkpoint_dir = checkpoint_dir
        self._last_val: Optional[Dict[str, Any]] = None
        self._evals_log: Dict[str, Any] = {}
        install_sigterm_handler()

    @property
    def checkpoint_dir(self) -> str:
        if self._checkpoint_dir is None:
            from ._context import context

            self._checkpoint_dir = context(start_guard=False).checkpoint_dir
        return self._checkpoint_dir

    def rounds_left(self, resume_from: "Optional[str | os.PathLike[str]]") -> int:
        """``num_boost_round`` for ``xgb.train``: ``rounds`` less those already in the checkpoint."""
        if not resume_from:
            return self.rounds
        done = xgboost.Booster(model_file=os.fspath(resume_from)).num_boosted_rounds()
        return max(0, self.rounds - done)

    # -- helpers -----------------------------------------------------------------------------

    def _val_name(self, evals_log: Dict[str, Any]) -> Optional[str]:
        if self.validation_set is not None:
            return self.validation_set if self.validation_set in evals_log else None
        for name in evals_log:
            if name in _VALIDATION_NAMES:
                return name
        names = list(evals_log)
        return names[-1] if len(names) > 1 else None

    def _emit_validation(self, evals_log: Dict[str, Any]) -> None:
        name = self._val_name(evals_log)
        if name is None:
            return
        values = numeric({metric: _last(h) for metric, h in evals_log[name].items()})
        if values and values != self._last_val:
            self._last_val = values
            report.metrics("validation", **values)

    @staticmethod
    def _progress_metrics(evals_log: Dict[str, Any]) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for data, metrics in evals_log.items():
            for metric, history in metrics.items():
                out[f"{data}_{metric}"] = _last(history)
        if evals_log:
            first = next(iter(evals_log.values()))
            if first:
                out["loss"] = _last(list(first.values())[-1])
        return numeric(out)

    # -- TrainingCallback ----------------------------------------------------------------------

    def before_training(self, model):
        install_sigterm_handler()
        return model

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        step = int(model.num_boosted_rounds())
        self._evals_log = evals_log
        metrics = self._progress_metrics(evals_log)
        report.progress(step, total_steps=self.rounds, **metrics)
        stop = should_stop()
        due = self.every_n_rounds is not None and step % self.every_n_rounds == 0
        if stop or due or step >= self.rounds:
            self._emit_validation(evals_log)
            path = os.path.join(self.checkpoint_dir, f"round-{step}.json")
            with atomic_checkpoint(path, step=step, **metrics) as tmp:
                model.save_model(tmp)
        return stop

    def after_training(self, model):
        self._emit_validation(self._evals_log)
        return model
