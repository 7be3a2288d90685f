"""PyTorch Lightning integration. Importing this module imports ``lightning.pytorch`` (or, if that
is not installed, ``pytorch_lightning``).

    from kiln_trainer.lightning import KilnCallback
    from kiln_trainer.torch import ResumableDataLoader

    ctx = kiln_trainer.context()
    trainer = L.Trainer(max_epochs=10, enable_checkpointing=False, callbacks=[KilnCallback(every_n_steps=500)])
    trainer.fit(model, ResumableDataLoader(ds, batch_size=32, seed=0), ckpt_path=ctx.resume_from,
                weights_only=False)                                  # None on a fresh start
    if kiln_trainer.should_stop():    # only where Lightning returns on SIGTERM (see below)
        raise SystemExit(0)

What it reports (only on global rank zero):

* ``on_train_batch_end`` -> ``progress`` once per completed optimiser step: ``step=trainer.global_step``,
  ``total_steps`` (``max_steps``, else ``estimated_stepping_batches`` when finite),
  ``epoch=trainer.current_epoch + 1`` (1-based), ``total_epochs=max_epochs``, and the numeric
  non-validation entries of ``trainer.callback_metrics`` (what ``self.log`` logged, e.g. ``loss``).
* Checkpoints: every ``every_n_steps`` steps (if given) and after SIGTERM, the callback saves
  ``<checkpoint_dir>/step-<N>.ckpt`` with ``trainer.save_checkpoint(tmp, weights_only=False)``
  through ``kiln_trainer.atomic_checkpoint`` and announces it. ``checkpoint_dir`` defaults to
  ``ctx.checkpoint_dir``. Files written by Lightning's own ``ModelCheckpoint`` are not announced
  (their final path is only known after the write); use ``every_n_steps`` for Kiln-visible ones.
* SIGTERM: Lightning 2.x chains its own handler (the kit's, installed first, still runs) and raises
  ``SIGTERMException`` (a ``SystemExit``, status 0) after the batch in progress, so ``fit()`` does not
  return. The callback saves in that batch's ``on_train_batch_end``, before Lightning raises, or in
  ``on_exception`` if Lightning noticed the signal elsewhere (e.g. in validation). It sets
  ``trainer.should_stop`` only when Lightning did not see the signal (older versions, a stop
  requested another way): ``should_stop`` first runs a validation pass, which can outlast the grace.
* Exact resume mid-epoch needs a train loader with ``state_dict``/``load_state_dict`` that Lightning
  saves and restores: ``kiln_trainer.torch.ResumableDataLoader``.
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
                trainer.save_checkpoint(tmp, weights_only=False)  # full state: resumable
        else:  # other ranks take part in the collective save; rank zero writes the file
            trainer.save_checkpoint(path, weights_only=False)
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
        if stop and not getattr(trainer, "received_sigterm", False):
            # Lightning >= 2.x saw the SIGTERM too and ends fit() itself (SIGTERMException, exit 0)
            # right after this batch; only without that (a stop requested another way) ask it to stop.
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception):
        # Lightning raises SIGTERMException (a SystemExit) wherever it notices the signal, e.g. in
        # validation after this step's on_train_batch_end had run: save the step it stopped at.
        step = int(getattr(trainer, "global_step", 0))
        if isinstance(exception, SystemExit) and should_stop() and step > 0 and step != self._last_saved:
            self._save(trainer, step, self._metrics(trainer))

    def on_validation_end(self, trainer, pl_module):
        self._emit_validation(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._emit_validation(trainer)
