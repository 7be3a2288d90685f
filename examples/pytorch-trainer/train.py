#!/usr/bin/env python3
"""Kiln example trainer: the training loop a PyTorch user writes, on data it generates.

A ``torch.nn`` MLP with dropout classifies points into 4 classes; ``DataLoader`` over the kit's
seeded, resumable sampler; AdamW; checkpoints with ``torch.save`` of model, optimizer, sampler and RNG
state, written through ``kiln_trainer.atomic_checkpoint``. Runs on CUDA when ``CUDA_VISIBLE_DEVICES``
names a GPU (Kiln leaves it empty on a CPU pool), on the CPU otherwise. The "PyTorch loop" section of
docs/trainer-protocol.md is this file's loop.

Params (``KILN_PARAMS``): epochs 5, samples 2048, batch_size 64, hidden 128, lr 0.003, every 10
(checkpoint every N steps), seed 0, step_delay_ms 0. Invalid params exit 2. Checkpoints
``<checkpoint dir>/step-N.pt``; validation ``val_loss``/``accuracy`` per epoch; the ``model`` artifact
``<artifact dir>/model.pt`` (the state dict). Exact resume: the loss after a resume continues the
uninterrupted curve to the last bit (data order from (seed, epoch), RNG state in the checkpoint, and
the DataLoader's own generator, so that iterating a loader never draws from the global RNG).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

import kiln_trainer  # noqa: E402

try:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
except ImportError as exc:  # exit 2: Kiln fails the job at once, with this line in the log tail
    print(f"train.py: this trainer needs torch ({exc}); install python/requirements-frameworks.txt into the python "
          f"that runs it ({sys.executable})", file=sys.stderr)
    sys.exit(kiln_trainer.EXIT_INVALID_PARAMS)

import kiln_trainer.torch  # noqa: E402
from kiln_trainer import report  # noqa: E402

DEFAULTS = {"epochs": 5, "samples": 2048, "batch_size": 64, "hidden": 128, "lr": 3e-3, "every": 10, "seed": 0,
            "step_delay_ms": 0}
FEATURES, CLASSES = 16, 4


def params(raw: dict) -> dict:
    p = {**DEFAULTS, **raw}
    ints = ("epochs", "samples", "batch_size", "hidden", "every")
    bad = [k for k in ints if not isinstance(p[k], int) or isinstance(p[k], bool) or p[k] < 1]
    bad += [k for k in ("seed", "step_delay_ms") if not isinstance(p[k], int) or p[k] < 0]
    if not isinstance(p["lr"], (int, float)) or not p["lr"] > 0:
        bad.append("lr")
    if bad:
        raise ValueError(f"invalid params: {', '.join(bad)} out of range in {p}")
    return p


def data(seed: int, n: int):
    """Four classes by quadrant of a fixed random projection, with label noise: same tensors per seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 512, FEATURES, generator=g)
    proj = x @ torch.randn(FEATURES, 2, generator=g)
    y = (proj[:, 0] > 0).long() * 2 + (proj[:, 1] > 0).long()
    flip = torch.rand(len(y), generator=g) < 0.05
    y[flip] = torch.randint(0, CLASSES, (int(flip.sum()),), generator=g)
    return TensorDataset(x[:n], y[:n]), (x[n:], y[n:])


def main() -> int:
    ctx = kiln_trainer.context()
    try:
        p = params(ctx.params)
    except ValueError as exc:
        print(f"train.py: {exc}", file=sys.stderr)
        return kiln_trainer.EXIT_INVALID_PARAMS
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(p["seed"])
    train_ds, (val_x, val_y) = data(p["seed"], p["samples"])
    model = nn.Sequential(nn.Linear(FEATURES, p["hidden"]), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(p["hidden"], CLASSES)).to(device)
    # -- the "PyTorch loop" section of docs/trainer-protocol.md --
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"])
    sampler = kiln_trainer.torch.ResumableSampler(len(train_ds), seed=p["seed"])
    loader = DataLoader(train_ds, batch_size=p["batch_size"], sampler=sampler, generator=torch.Generator())
    per_epoch, step = len(loader), 0
    total = p["epochs"] * per_epoch
    if ctx.resume_from:  # the state after `step` steps: the next step is step + 1
        state = torch.load(ctx.resume_from, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
        step = state["step"]
    for epoch in range(step // per_epoch, p["epochs"]):
        sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            report.progress(step, total, epoch=epoch + 1, total_epochs=p["epochs"], loss=loss.item())
            kiln_trainer.wait_for_stop(p["step_delay_ms"] / 1000)  # test hook
            if step % p["every"] == 0 or step == total or kiln_trainer.should_stop():
                with kiln_trainer.atomic_checkpoint(f"{ctx.checkpoint_dir}/step-{step}.pt", step=step,
                                                    loss=loss.item()) as tmp:
                    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                "sampler": sampler.state_dict(), "rng": torch.get_rng_state(),
                                "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None}, tmp)
            if kiln_trainer.should_stop():
                return 0  # SIGTERM: saved and announced
        model.eval()
        with torch.no_grad():
            logits = model(val_x.to(device))
            report.metrics("validation", val_loss=nn.functional.cross_entropy(logits, val_y.to(device)).item(),
                           accuracy=(logits.argmax(1).cpu() == val_y).float().mean().item())
    with kiln_trainer.atomic_checkpoint(f"{ctx.artifact_dir}/model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    report.artifact("model", f"{ctx.artifact_dir}/model.pt")
    # -- end of section --
    return 0


if __name__ == "__main__":
    sys.exit(main())
