"""``import kiln_trainer`` is dependency-free and never pulls in a framework."""

from __future__ import annotations

import textwrap

import kiln_trainer


def test_import_does_not_load_frameworks(run_py):
    code = textwrap.dedent("""
        import sys
        import kiln_trainer, kiln_trainer.report
        ctx = kiln_trainer.context(install_signal_handler=False, start_guard=False)
        heavy = sorted(m for m in ("transformers", "torch", "lightning", "pytorch_lightning", "numpy", "xgboost")
                       if m in sys.modules)
        print(heavy)
    """)
    p = run_py(code, events=False)
    assert p.proc.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_public_api():
    assert kiln_trainer.__version__ == "0.1.0"
    for name in ("context", "report", "atomic_checkpoint", "should_stop", "guard_parent", "KilnContext"):
        assert hasattr(kiln_trainer, name), name
    for name in ("progress", "checkpoint", "metrics", "artifact"):
        assert callable(getattr(kiln_trainer.report, name)), name
    assert kiln_trainer.EXIT_INVALID_PARAMS == 2
