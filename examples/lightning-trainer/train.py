#!/usr/bin/env python3
"""Kiln example trainer: a small MLP classifier in PyTorch Lightning on data it generates.

The Lightning section of docs/trainer-protocol.md is this file's training code. Params
(``KILN_PARAMS``): epochs 4, batch_size 32, every 10 (checkpoint every N steps), lr 0.01, seed 0,
step_delay_ms 0. Checkpoints ``<checkpoint dir>/step-N.ckpt`` from the kit's callback; validation
``val_loss``/``val_acc`` per epoch; the ``model`` artifact ``<artifact dir>/model.ckpt``. Needs torch
and lightning (python/requirements-frameworks.txt).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import kiln_trainer  # noqa: E402
import kiln_trainer.lightning  # noqa: E402
from kiln_trainer.torch import ResumableDataLoader  # noqa: E402

DEFAULTS = {"epochs": 4, "batch_size": 32, "every": 10, "lr": 0.01, "seed": 0, "step_delay_ms": 0}


def data(seed: int, n: int = 640, features: int = 16):
    """Two classes separated by a fixed nonlinear boundary: the same tensors for the same seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = ((x[:, 0] * x[:, 1] + x[:, 2].sin() + 0.3 * torch.randn(n, generator=g)) > 0).long()
    split = n * 4 // 5
    return TensorDataset(x[:split], y[:split]), TensorDataset(x[split:], y[split:])


class MLP(L.LightningModule):
    def __init__(self, features: int = 16, lr: float = 0.01, step_delay_ms: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        kiln_trainer.wait_for_stop(self.hparams.step_delay_ms / 1000)  # lets a test interrupt a short run
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main() -> int:
    ctx = kiln_trainer.context()
    p = {**DEFAULTS, **ctx.params}
    if not all(isinstance(p[k], int) and p[k] >= 1 for k in ("epochs", "batch_size", "every")):
        print(f"train.py: invalid params: epochs, batch_size and every must be integers >= 1, got {p}", file=sys.stderr)
        return kiln_trainer.EXIT_INVALID_PARAMS
    torch.manual_seed(p["seed"])  # the initial weights; resume loads them from the checkpoint
    train_ds, val_ds = data(p["seed"])
    model = MLP(lr=p["lr"], step_delay_ms=p["step_delay_ms"])
    # -- the Lightning section of docs/trainer-protocol.md --
    trainer = L.Trainer(max_epochs=p["epochs"], accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[kiln_trainer.lightning.KilnCallback(every_n_steps=p["every"])])
    train = ResumableDataLoader(train_ds, batch_size=p["batch_size"], seed=p["seed"])  # resumes mid-epoch
    trainer.fit(model, train, DataLoader(val_ds, batch_size=256), ckpt_path=ctx.resume_from, weights_only=False)
    if kiln_trainer.should_stop():
        return 0  # only reached where Lightning returns on SIGTERM; 2.6 exits 0 from inside fit()
    trainer.save_checkpoint(f"{ctx.artifact_dir}/model.ckpt", weights_only=True)
    kiln_trainer.report.artifact("model", f"{ctx.artifact_dir}/model.ckpt")
    # -- end of section --
    return 0


if __name__ == "__main__":
    sys.exit(main())
