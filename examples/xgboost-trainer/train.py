#!/usr/bin/env python3
"""Kiln example trainer: gradient-boosted trees with XGBoost on a regression set it generates.

The XGBoost section of docs/trainer-protocol.md is this file's training code. Params (``KILN_PARAMS``):
rounds 20, every 5 (checkpoint every N rounds), max_depth 4, eta 0.3, seed 0, round_delay_ms 0.
Checkpoints ``<checkpoint dir>/round-N.json`` (XGBoost JSON), resume through ``xgb_model=``, the
``model`` artifact ``<artifact dir>/model.json``. Needs numpy and xgboost (python/requirements-frameworks.txt).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402

import kiln_trainer  # noqa: E402
import kiln_trainer.xgboost  # noqa: E402

DEFAULTS = {"rounds": 20, "every": 5, "max_depth": 4, "eta": 0.3, "seed": 0, "round_delay_ms": 0}


def data(seed: int, n: int = 2000, features: int = 8):
    """A fixed nonlinear regression task: the same arrays for the same seed."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = np.sin(x[:, 0]) * 2 + x[:, 1] * x[:, 2] + 0.5 * x[:, 3] ** 2 + rng.normal(scale=0.1, size=n)
    split = n * 3 // 4
    return xgb.DMatrix(x[:split], label=y[:split]), xgb.DMatrix(x[split:], label=y[split:])


class Slow(xgb.callback.TrainingCallback):
    """``round_delay_ms``: lets a test interrupt a run that would otherwise end in a second."""

    def __init__(self, ms: int):
        super().__init__()
        self.seconds = ms / 1000

    def after_iteration(self, model, epoch, evals_log):
        kiln_trainer.wait_for_stop(self.seconds)
        return False


def main() -> int:
    ctx = kiln_trainer.context()
    p = {**DEFAULTS, **ctx.params}
    if not (isinstance(p["rounds"], int) and p["rounds"] >= 1 and isinstance(p["every"], int) and p["every"] >= 1):
        print(f"train.py: invalid params: rounds and every must be integers >= 1, got {p}", file=sys.stderr)
        return kiln_trainer.EXIT_INVALID_PARAMS
    dtrain, dval = data(p["seed"])
    params = {"objective": "reg:squarederror", "max_depth": p["max_depth"], "eta": p["eta"], "seed": p["seed"],
              "tree_method": "hist", "nthread": 1}
    # -- the XGBoost section of docs/trainer-protocol.md --
    kiln = kiln_trainer.xgboost.KilnCallback(rounds=p["rounds"], every_n_rounds=p["every"])
    callbacks = [kiln]
    callbacks.append(Slow(p["round_delay_ms"]))  # test hook
    booster = xgb.train(params, dtrain, num_boost_round=kiln.rounds_left(ctx.resume_from), xgb_model=ctx.resume_from,
                        evals=[(dtrain, "train"), (dval, "validation")], callbacks=callbacks, verbose_eval=False)
    if kiln_trainer.should_stop():
        return 0  # SIGTERM: round-N.json saved and announced
    with kiln_trainer.atomic_checkpoint(f"{ctx.artifact_dir}/model.json") as tmp:
        booster.save_model(tmp)
    kiln_trainer.report.artifact("model", f"{ctx.artifact_dir}/model.json")
    # -- end of section --
    return 0


if __name__ == "__main__":
    sys.exit(main())
