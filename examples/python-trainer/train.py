#!/usr/bin/env python3
"""Kiln example trainer in plain Python: logistic regression trained with mini-batch SGD.

No numpy, no torch: the data set is synthetic, generated from ``seed`` with ``random.Random``, so
the whole run is deterministic. It follows docs/trainer-protocol.md through the ``kiln_trainer``
kit (``python/``, put on sys.path below so no ``pip install`` is needed):

* params (``KILN_PARAMS``): epochs 5, steps_per_epoch 20, batch_size 32, lr 0.1, seed 1,
  step_delay_ms 0, checkpoint_every (steps, default: once per epoch). Invalid params -> exit 2.
* a ``progress`` event per step, ``metrics`` (validation ``val_loss``, ``accuracy``) per epoch,
  checkpoints ``<checkpoint dir>/step-N.json`` written atomically and announced, the ``model``
  artifact ``<artifact dir>/model.json`` at the end.
* exact resume from ``KILN_RESUME_FROM``: the next step reported is the checkpoint's step + 1 and the
  final weights equal those of an uninterrupted run (the per-epoch shuffle depends only on
  (seed, epoch), the checkpoint stores the weights exactly).
* SIGTERM: finish the current step, save a checkpoint, announce it, exit 0.
* ``KILN_MODE=evaluate``: load ``KILN_MODEL_PATH``, report validation metrics, exit 0.

Run by hand: ``python3 examples/python-trainer/train.py`` (writes ./checkpoints and ./artifacts).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import kiln_trainer  # noqa: E402
from kiln_trainer import report  # noqa: E402

FORMAT = "kiln-example-logreg/1"
FEATURES = 10
VAL_SIZE = 512

DEFAULTS = {
    "epochs": 5,
    "steps_per_epoch": 20,
    "batch_size": 32,
    "lr": 0.1,
    "seed": 1,
    "step_delay_ms": 0,
    "checkpoint_every": None,  # None: at the end of every epoch
}


class InvalidParams(Exception):
    pass


def _int(params, name, minimum):
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise InvalidParams(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidParams(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _float(params, name, minimum, strict):
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParams(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise InvalidParams(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def parse_params(raw):
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        print(f"train.py: ignoring unknown params: {', '.join(unknown)}", file=sys.stderr)
    params = {**DEFAULTS, **{k: v for k, v in raw.items() if k in DEFAULTS}}
    out = {
        "epochs": _int(params, "epochs", 1),
        "steps_per_epoch": _int(params, "steps_per_epoch", 1),
        "batch_size": _int(params, "batch_size", 1),
        "lr": _float(params, "lr", 0.0, strict=True),
        "seed": _int(params, "seed", -(2**63)),
        "step_delay_ms": _float(params, "step_delay_ms", 0.0, strict=False),
    }
    out["checkpoint_every"] = (
        out["steps_per_epoch"] if params["checkpoint_every"] is None else _int(params, "checkpoint_every", 1)
    )
    return out


# --------------------------------------------------------------------------- data and model


def make_data(seed, train_size):
    """Linearly separable-ish data: labels from a hidden weight vector plus label noise."""
    rng = random.Random(seed)
    true_w = [rng.gauss(0.0, 1.0) for _ in range(FEATURES)]
    true_b = rng.gauss(0.0, 0.5)

    def sample(r, n):
        xs, ys = [], []
        for _ in range(n):
            x = [r.gauss(0.0, 1.0) for _ in range(FEATURES)]
            z = sum(w * v for w, v in zip(true_w, x)) + true_b + r.gauss(0.0, 0.5)
            xs.append(x)
            ys.append(1.0 if z > 0 else 0.0)
        return xs, ys

    train = sample(random.Random(seed * 7919 + 1), train_size)
    val = sample(random.Random(seed * 7919 + 2), VAL_SIZE)
    return train, val


def epoch_order(seed, epoch, n):
    """The shuffle of epoch ``epoch`` (0-based): a function of (seed, epoch) only."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def sigmoid(z):
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def log_loss(p, y):
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


def sgd_step(w, b, xs, ys, idx, lr):
    grad_w = [0.0] * len(w)
    grad_b = 0.0
    loss = 0.0
    for i in idx:
        x, y = xs[i], ys[i]
        p = sigmoid(sum(wj * xj for wj, xj in zip(w, x)) + b)
        loss += log_loss(p, y)
        err = p - y
        for j, xj in enumerate(x):
            grad_w[j] += err * xj
        grad_b += err
    n = len(idx)
    w = [wj - lr * g / n for wj, g in zip(w, grad_w)]
    b = b - lr * grad_b / n
    return w, b, loss / n


def evaluate(w, b, xs, ys):
    loss = 0.0
    correct = 0
    for x, y in zip(xs, ys):
        p = sigmoid(sum(wj * xj for wj, xj in zip(w, x)) + b)
        loss += log_loss(p, y)
        correct += int((p >= 0.5) == (y == 1.0))
    return {"val_loss": loss / len(xs), "accuracy": correct / len(xs)}


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(ctx, params, step, w, b, loss):
    path = os.path.join(ctx.checkpoint_dir, f"step-{step}.json")
    state = {"format": FORMAT, "step": step, "weights": w, "bias": b, "params": params}
    with kiln_trainer.atomic_checkpoint(path, step=step, loss=loss) as tmp:
        with open(tmp, "w") as f:
            json.dump(state, f)
    return path


def load_checkpoint(path, params):
    with open(path) as f:
        state = json.load(f)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    saved = state.get("params", {})
    for key in ("seed", "batch_size", "steps_per_epoch"):
        if saved.get(key) != params[key]:
            # Resuming with another data order would not continue the same run.
            raise ValueError(f"{path}: checkpoint was made with {key}={saved.get(key)!r}, params say {params[key]!r}")
    return int(state["step"]), [float(v) for v in state["weights"]], float(state["bias"])


# --------------------------------------------------------------------------- modes


def train(ctx, params):
    spe, bs = params["steps_per_epoch"], params["batch_size"]
    total_steps = params["epochs"] * spe
    (xs, ys), (vx, vy) = make_data(params["seed"], spe * bs)

    step, w, b = 0, [0.0] * FEATURES, 0.0
    if ctx.resume_from:
        step, w, b = load_checkpoint(ctx.resume_from, params)
        print(f"train.py: resumed from {ctx.resume_from} at step {step}", file=sys.stderr)
    last_saved = step
    loss = None
    order, order_epoch = None, None

    while step < total_steps:
        if kiln_trainer.should_stop():
            break
        epoch = step // spe  # 0-based epoch of the step about to run
        if order_epoch != epoch:
            order, order_epoch = epoch_order(params["seed"], epoch, len(xs)), epoch
        batch = order[(step % spe) * bs:(step % spe + 1) * bs]
        w, b, loss = sgd_step(w, b, xs, ys, batch, params["lr"])
        step += 1
        report.progress(step, total_steps, epoch=epoch + 1, total_epochs=params["epochs"], loss=loss)

        if step % spe == 0:
            report.metrics("validation", **evaluate(w, b, vx, vy))
        if step % params["checkpoint_every"] == 0 or step == total_steps:
            save_checkpoint(ctx, params, step, w, b, loss)
            last_saved = step
        if params["step_delay_ms"] > 0 and kiln_trainer.wait_for_stop(params["step_delay_ms"] / 1000.0):
            break

    if step < total_steps:  # stopped by SIGTERM
        if step > last_saved:
            save_checkpoint(ctx, params, step, w, b, loss)
        print(f"train.py: SIGTERM, stopped after step {step} with a checkpoint", file=sys.stderr)
        return 0

    final = evaluate(w, b, vx, vy)
    model_path = os.path.join(ctx.artifact_dir, "model.json")
    with kiln_trainer.atomic_checkpoint(model_path) as tmp:
        with open(tmp, "w") as f:
            json.dump({"format": FORMAT, "weights": w, "bias": b, "seed": params["seed"],
                       "steps": step, "metrics": final}, f)
    report.artifact("model", model_path)
    print(f"train.py: done, {step} steps, val_loss={final['val_loss']:.4f} accuracy={final['accuracy']:.3f}",
          file=sys.stderr)
    return 0


def evaluate_mode(ctx, params):
    if not ctx.model_path:
        print("train.py: KILN_MODE=evaluate needs KILN_MODEL_PATH", file=sys.stderr)
        return 2
    try:
        with open(ctx.model_path) as f:
            model = json.load(f)
        w, b = [float(v) for v in model["weights"]], float(model["bias"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"train.py: cannot load model {ctx.model_path}: {exc}", file=sys.stderr)
        return 1
    _, (vx, vy) = make_data(params["seed"], 0)
    values = evaluate(w, b, vx, vy)
    report.metrics("validation", **values)
    print(f"train.py: evaluated {ctx.model_path}: {values}", file=sys.stderr)
    return 0


def main():
    try:
        ctx = kiln_trainer.context()
        params = parse_params(ctx.params)
    except (ValueError, InvalidParams) as exc:
        print(f"train.py: invalid params: {exc}", file=sys.stderr)
        return kiln_trainer.EXIT_INVALID_PARAMS
    if ctx.mode == "evaluate":
        return evaluate_mode(ctx, params)
    return train(ctx, params)


if __name__ == "__main__":
    sys.exit(main())
