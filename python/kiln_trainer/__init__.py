"""kiln_trainer: the trainer side of the Kiln trainer contract (docs/trainer-protocol.md).

Dependency-free. ``import kiln_trainer`` never imports transformers, torch, lightning or xgboost;
the framework integrations live in ``kiln_trainer.hf``, ``kiln_trainer.lightning``,
``kiln_trainer.xgboost`` and ``kiln_trainer.torch`` and import their framework only when those
modules are imported.

    import kiln_trainer
    from kiln_trainer import report

    ctx = kiln_trainer.context()          # env, SIGTERM handler, parent-death guard
    for step in range(start + 1, total + 1):
        loss = train_one_step()
        report.progress(step, total, loss=loss)
        if kiln_trainer.should_stop():    # SIGTERM: save, announce, exit 0
            with kiln_trainer.atomic_checkpoint(f"{ctx.checkpoint_dir}/step-{step}.pt", step=step) as tmp:
                save(tmp)
            raise SystemExit(0)
"""

from . import report
from ._atomic import atomic_checkpoint
from ._context import PROTOCOL_VERSION, KilnContext, context
from ._guard import PARENT_GONE_EXIT_CODE, guard_parent
from ._stop import should_stop, wait_for_stop

__version__ = "0.1.0"

#: Exit status for invalid params: Kiln fails the job at once, without retries.
EXIT_INVALID_PARAMS = 2

__all__ = [
    "EXIT_INVALID_PARAMS",
    "KilnContext",
    "PARENT_GONE_EXIT_CODE",
    "PROTOCOL_VERSION",
    "atomic_checkpoint",
    "context",
    "guard_parent",
    "report",
    "should_stop",
    "wait_for_stop",
]
