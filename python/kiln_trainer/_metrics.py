"""Shared helpers for the framework callbacks (no framework imports here)."""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Mapping

from .report import _number

_SKIP = {"epoch", "step", "global_step"}

# What a trainer measures about itself rather than about the model: wall time, throughput, FLOPs,
# memory deltas, tokens seen. ``train_loss`` is HF's mean loss over *this attempt's* steps, so it
# differs between a resumed run and an uninterrupted one; the per-step ``loss`` is the curve.
_NOT_QUALITY = re.compile(
    r"(^|_)runtime$|per_second|flos|(^|_)mem_|preparation_time$|compilation_time$|tokens_seen|^train_loss$"
)


def is_quality(key: str) -> bool:
    """False for runtime/throughput/FLOPs/memory keys (``eval_runtime``, ``train_samples_per_second``,
    ``total_flos``, ``train_mem_cpu_alloc_delta``...) and HF's end-of-run ``train_loss``."""
    return not _NOT_QUALITY.search(key)


def numeric(values: Mapping[str, Any], skip: Iterable[str] = ()) -> Dict[str, Any]:
    """Only the entries that are numbers (tensors/numpy scalars converted); ``skip`` keys dropped."""
    skip = set(skip) | _SKIP
    out: Dict[str, Any] = {}
    for key, value in values.items():
        if key in skip:
            continue
        try:
            out[str(key)] = _number(value)
        except TypeError:
            continue
    return out


def validation_values(values: Mapping[str, Any], prefixes: Iterable[str]) -> Dict[str, Any]:
    """Keep every numeric entry under its own name and add an un-prefixed alias.

    ``eval_accuracy`` (or ``val_accuracy``, ``val/accuracy``) is kept and also reported as
    ``accuracy``; the loss becomes ``val_loss`` rather than a bare ``loss`` that would read like the
    training loss. An alias never overwrites a key that is already there.
    """
    base = numeric(values)
    out = dict(base)
    for key, value in base.items():
        for prefix in prefixes:
            if key.startswith(prefix) and len(key) > len(prefix):
                short = key[len(prefix):]
                alias = "val_loss" if short == "loss" else short
                out.setdefault(alias, value)
                break
    return out
