#!/usr/bin/env python3
"""Kiln example trainer: a tiny GPT-2 (2 layers, n_embd 64) trained from scratch with the Hugging Face
``Trainer`` on token sequences it generates (no tokenizer, nothing downloaded).

The "HF Trainer in 3 lines" section of docs/trainer-protocol.md is this file's training code. Params
(``KILN_PARAMS``): epochs 2, samples 160, batch_size 8 (so 40 steps), save_steps 10, lr 0.001, seed 0,
step_delay_ms 0. HF writes ``<checkpoint dir>/checkpoint-N/`` (announced by the kit's callback), the
validation metric is ``val_loss`` (HF's ``eval_loss``), the ``model`` artifact is
``<artifact dir>/model/``. Needs torch, transformers and accelerate (python/requirements-frameworks.txt).
CUDA is used when ``CUDA_VISIBLE_DEVICES`` names a GPU (Kiln leaves it empty on a CPU pool).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import kiln_trainer  # noqa: E402
import kiln_trainer.hf  # noqa: E402

DEFAULTS = {"epochs": 2, "samples": 160, "batch_size": 8, "save_steps": 10, "lr": 1e-3, "seed": 0, "step_delay_ms": 0}
VOCAB, LENGTH = 64, 32


def sequences(n: int, seed: int):
    """Arithmetic progressions mod VOCAB (start and stride random): learnable, fixed for a seed."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 8, (n, 1), generator=g)
    ids = (start + stride * torch.arange(LENGTH)) % VOCAB
    return [{"input_ids": row, "labels": row} for row in ids]


class Slow(TrainerCallback):
    """``step_delay_ms``: lets a test interrupt a run that would otherwise end in seconds."""

    def __init__(self, ms: int):
        self.seconds = ms / 1000

    def on_step_end(self, args, state, control, **kwargs):
        kiln_trainer.wait_for_stop(self.seconds)


def main() -> int:
    ctx = kiln_trainer.context()
    p = {**DEFAULTS, **ctx.params}
    if not all(isinstance(p[k], int) and p[k] >= 1 for k in ("epochs", "samples", "batch_size", "save_steps")):
        print(f"train.py: invalid params: epochs, samples, batch_size, save_steps must be integers >= 1, got {p}",
              file=sys.stderr)
        return kiln_trainer.EXIT_INVALID_PARAMS
    torch.manual_seed(p["seed"])
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=2))
    ds, val_ds = sequences(p["samples"], p["seed"]), sequences(32, p["seed"] + 1)
    settings = dict(num_train_epochs=p["epochs"], per_device_train_batch_size=p["batch_size"], learning_rate=p["lr"],
                    seed=p["seed"], logging_steps=5, report_to="none", disable_tqdm=True)
    # -- the "HF Trainer in 3 lines" section of docs/trainer-protocol.md --
    args = TrainingArguments(output_dir=ctx.checkpoint_dir, save_steps=p["save_steps"], eval_strategy="steps",
                             eval_steps=p["save_steps"], **settings)  # evaluate, then save: exact resume
    trainer = Trainer(model=model, args=args, callbacks=[kiln_trainer.hf.KilnCallback()], train_dataset=ds,
                      eval_dataset=val_ds)
    trainer.add_callback(Slow(p["step_delay_ms"]))  # test hook
    trainer.train(resume_from_checkpoint=ctx.resume_from)  # None on a fresh start
    if kiln_trainer.should_stop():
        return 0  # SIGTERM: checkpoint-N saved and announced
    trainer.save_model(f"{ctx.artifact_dir}/model")
    kiln_trainer.report.artifact("model", f"{ctx.artifact_dir}/model")
    # -- end of section --
    return 0


if __name__ == "__main__":
    sys.exit(main())
