"""Hugging Face ``transformers.Trainer`` integration. Importing this module imports transformers.

    from kiln_trainer.hf import KilnCallback

    ctx = kiln_trainer.context()
    args = TrainingArguments(output_dir=ctx.checkpoint_dir, save_strategy="steps", save_steps=500, ...)
    trainer = Trainer(model=model, args=args, ..., callbacks=[KilnCallback()])
    trainer.train(resume_from_checkpoint=ctx.resume_from)   # None on a fresh start
    if kiln_trainer.should_stop():                          # stopped by SIGTERM: checkpoint saved
        raise SystemExit(0)

What it reports (only on the world process zero):

* ``on_log`` -> ``progress``: ``step=state.global_step``, ``total_steps=state.max_steps``,
  ``epoch`` = the epoch in progress, 1-based (HF's fractional ``state.epoch`` 4.6875 is epoch 5),
  ``total_epochs``, and the numeric training-curve logs as metrics (``loss``, ``grad_norm``,
  ``learning_rate``...). Evaluation logs (``eval_*``) are left to ``on_evaluate``; runtime,
  throughput, FLOPs and memory keys (``train_runtime``, ``*_per_second``, ``total_flos``...) and the
  end-of-run ``train_loss`` average are dropped. Between logs, ``on_step_end`` sends a bare progress
  at most every ``progress_every_s`` seconds so a large ``logging_steps`` never looks like a stall.
* ``on_save`` -> ``checkpoint`` with ``<args.output_dir>/checkpoint-<global_step>`` (HF has finished
  writing it when ``on_save`` runs), with the last training metrics. ``args.output_dir`` must be
  ``ctx.checkpoint_dir`` (or another dir inside the job work dir) for Kiln to accept the path.
* ``on_evaluate`` -> ``metrics`` with ``split="validation"``: each quality metric once, under the
  name ``compute_metrics`` gave it (``eval_accuracy`` -> ``accuracy``), with ``eval_loss`` reported as
  ``val_loss``; ``eval_runtime``, ``eval_*_per_second`` and ``epoch`` are left out.
* ``on_step_end``: after SIGTERM (``kiln_trainer.should_stop()``) sets ``control.should_save`` and
  ``control.should_training_stop``, so HF saves ``checkpoint-N`` (announced by ``on_save``) and
  ``trainer.train()`` returns.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, Optional

from transformers import TrainerCallback

from . import report
from ._metrics import is_quality, numeric
from ._stop import install_sigterm_handler, should_stop

__all__ = ["KilnCallback"]


def _is_main(state: Any) -> bool:
    return bool(getattr(state, "is_world_process_zero", True))


def _epoch(state: Any) -> Optional[int]:
    """The epoch in progress, 1-based (HF's ``state.epoch`` 4.6875 of 7 is epoch 5/7)."""
    value = getattr(state, "epoch", None)
    if value is None:
        return None
    return max(1, math.ceil(round(float(value), 6)))


def _training(logs: Dict[str, Any]) -> Dict[str, Any]:
    """The training curve out of an ``on_log``: ``loss``, ``grad_norm``, ``learning_rate``...; no
    ``eval_*`` (``on_evaluate`` has them), no runtime/throughput/FLOPs, no end-of-run summary."""
    return {k: v for k, v in numeric(logs).items() if not k.startswith("eval_") and is_quality(k)}


def validation(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """HF's ``eval_*`` metrics under the names the user's ``compute_metrics`` gave them: ``eval_accuracy``
    -> ``accuracy``; ``eval_loss`` -> ``val_loss`` (a bare ``loss`` would read as the training loss).
    Runtime/throughput keys are dropped; a key without the prefix is kept as it is."""
    out: Dict[str, Any] = {}
    for key, value in numeric(metrics).items():
        if not is_quality(key):
            continue
        short = key[len("eval_"):] if key.startswith("eval_") and len(key) > len("eval_") else key
        out["val_loss" if short == "loss" else short] = value
    return out


def _total_epochs(args: Any, state: Any) -> Optional[float]:
    value = getattr(state, "num_train_epochs", None)
    if not value:
        value = getattr(args, "num_train_epochs", None)
    return value or None


class KilnCallback(TrainerCallback):
    """Reports HF Trainer progress/checkpoints/eval metrics to Kiln and stops cleanly on SIGTERM."""

    def __init__(self, progress_every_s: float = 10.0) -> None:
        super().__init__()
        self.progress_every_s = progress_every_s
        self._last_progress = 0.0
        self._last_metrics: Dict[str, Any] = {}
        install_sigterm_handler()  # the callback is built in the main thread, before train()

    # -- helpers -----------------------------------------------------------------------------

    def _progress(self, args: Any, state: Any, metrics: Dict[str, Any]) -> None:
        report.progress(
            int(state.global_step),
            total_steps=getattr(state, "max_steps", None) or None,
            epoch=_epoch(state),
            total_epochs=_total_epochs(args, state),
            **metrics,
        )
        self._last_progress = time.monotonic()

    # -- TrainerCallback events ----------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        install_sigterm_handler()
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not _is_main(state):
            return control
        train_logs = _training(logs or {})
        if train_logs:
            self._last_metrics = train_logs
        self._progress(args, state, train_logs)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if should_stop():
            control.should_save = True
            control.should_training_stop = True
        elif _is_main(state) and time.monotonic() - self._last_progress >= self.progress_every_s:
            self._progress(args, state, {})
        return control

    def on_save(self, args, state, control, **kwargs):
        if not _is_main(state):
            return control
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(path):
            report.checkpoint(path, int(state.global_step), **self._last_metrics)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if _is_main(state) and metrics:
            values = validation(metrics)
            if values:
                report.metrics("validation", **values)
        return control
