"""PyTorch Lightning integration. Importing this module imports ``lightning.pytorch`` (or, if that
is not installed, ``pytorch_lightning``).

    from kiln_trainer.lightning import KilnCallback

    ctx = kiln_trainer.context()
    trainer = L.Trainer(max_epochs=10, callbacks=[KilnCallback(every_n_steps=500)])
    trainer.fit(model, datamodule=dm, ckpt_path=ctx.resume_from)   # None on a fresh start
    if kiln_trainer.should_stop():
        raise SystemExit(0)

What it reports (only on global rank zero):

* ``on_train_batch_end`` -> ``progress`` once per completed optimiser step: ``step=trainer.global_step``,
  ``total_steps`` (``max_steps``, else ``estimated_stepping_batches`` when finite),
  ``epoch=trainer.current_epoch + 1`` (1-based), ``total_epochs=max_epochs``, and the numeric
  non-validation entries of ``trainer.callback_metrics`` (what ``self.log`` logged, e.g. ``loss``).
* Checkpoints: every ``every_n_steps`` steps (if given) and after SIGTERM, the callback saves
  ``<checkpoint_dir>/step-<N>.ckpt`` with ``trainer.save_checkpoint`` through
  ``kiln_trainer.atomic_checkpoint`` and announces it. After SIGTERM it also sets
  ``trainer.should_stop = True``, so ``fit`` returns. ``checkpoint_dir`` defaults to
  ``ctx.checkpoint_dir``. Files written by Lightning's own ``ModelCheckpoint`` are not announced
  (their final path is only known after the write); use ``every_n_steps`` for Kiln-visible ones.
* ``on_validation_end`` and ``on_save_checkpoint`` -> ``metrics`` with ``split="validation"``: the
  numeric ``callback_metrics`` whose names start with ``val_``/``val/``/``valid_``/``validation_``,
  each kept and also aliased without the prefix (``val_acc`` -> ``acc``; the loss stays
  ``val_loss``). Sanity-check validation is skipped; the same values are not sent twice in a row.

Multi-process (DDP) training: events come from rank zero only; the SIGTERM save assumes every rank
sees the signal at the same step, which Kiln's process-group SIGTERM makes likely but not certain.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

try:  # Lightning >= 2.0 unified package
    from lightning.pytorch import Callback
except ImportError:  # the older standalone package
    from pytorch_lightning import Callback  # type: ignore[no-redef]

from . import report
from ._atomic import atomic_checkpoint
from ._metrics import numeric, validation_values
from ._stop import install_sigterm_handler, should_stop

__all__ = ["KilnCallback"]

_VAL_PREFIXES = ("val_", "val/", "valid_", "validation_", "validation/")


def _is_val(key: str) -> bool:
    return key.startswith(_VAL_PREFIXES)


class KilnCallback(Callback):
    """Reports Lightning progress/validation metrics to Kiln; saves + stops cleanly on SIGTERM."""

    def __init__(self, every_n_steps: Optional[int] = None, checkpoint_dir: Optional[str] = None) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.every_n_steps = every_n_steps
        self._checkpoint_dir = checkpoint_dir
        self._last_step: Optional[int] = None
        self._last_saved: Optional[int] = None
        self._last_val: Optional[Dict[str, Any]] = None
        self._total_steps: Optional[int] = None
        install_sigterm_handler()  # built in the main thread, before fit() registers its own

    @property
    def checkpoint_dir(self) -> str:
        if self._checkpoint_dir is None:
            from ._context import context

            self._checkpoint_dir = context(start_guard=False).checkpoint_dir
        return self._checkpoint_dir

    # -- helpers -----------------------------------------------------------------------------

    def _metrics(self, trainer: Any) -> Dict[str, Any]:
        values = dict(getattr(trainer, "callback_metrics", None) or {})
        return numeric(values, skip=[k for k in values if _is_val(str(k))])

    def _save(self, trainer: Any, step: int, metrics: Dict[str, Any]) -> None:
        path = os.path.join(self.checkpoint_dir, f"step-{step}.ckpt")
        if getattr(trainer, "is_global_zero", True):
            with atomic_checkpoint(path, step=step, **metrics) as tmp:
                trainer.save_checkpoint(tmp)
        else:  # other ranks take part in the collective save; rank zero writes the file
            trainer.save_checkpoint(path)
        self._last_saved = step

    def _emit_validation(self, trainer: Any) -> None:
        if getattr(trainer, "sanity_checking", False) or not getattr(trainer, "is_global_zero", True):
            return
        values = dict(getattr(trainer, "callback_metrics", None) or {})
        val = validation_values({k: v for k, v in values.items() if _is_val(str(k))}, prefixes=_VAL_PREFIXES)
        if val and val != self._last_val:
            self._last_val = val
            report.metrics("validation", **val)

    # -- Callback hooks ------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module):
        install_sigterm_handler()

    def on_train_start(self, trainer, pl_module):
        total = getattr(trainer, "max_steps", -1)
        if total is None or total < 0:
            try:
                total = trainer.estimated_stepping_batches
            except Exception:
                total = None
        if isinstance(total, float) and not math.isfinite(total):
            total = None
        self._total_steps = int(total) if total else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = int(trainer.global_step)
        main = getattr(trainer, "is_global_zero", True)
        metrics = self._metrics(trainer)
        if main and step != self._last_step:  # one event per optimiser step (grad accumulation)
            max_epochs = getattr(trainer, "max_epochs", None)
            report.progress(
                step,
                total_steps=self._total_steps,
                epoch=int(trainer.current_epoch) + 1,
                total_epochs=max_epochs if max_epochs and max_epochs > 0 else None,
                **metrics,
            )
        self._last_step = step
        stop = should_stop()
        due = self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0
        if (stop or due) and step > 0 and step != self._last_saved:
            self._save(trainer, step, metrics)
        if stop:
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module):
        self._emit_validation(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._emit_validation(trainer)
