"""Resumable data order for PyTorch: importing this module imports torch.

Exact resume needs the batches after a checkpoint to be the ones an uninterrupted run would have
drawn. A plain ``DataLoader(shuffle=True)`` draws its order from the global RNG and restarts an
epoch from its first batch, so a run resumed mid-epoch sees other batches. These two keep the order
a function of ``(seed, epoch)`` and remember how far into the epoch the run got:

* ``ResumableSampler(n, seed)``: a shuffling ``Sampler`` (a fresh permutation per epoch from
  ``torch.Generator`` seeded with ``seed`` and the epoch), with ``set_epoch(e)``, ``state_dict()`` and
  ``load_state_dict(state)``. The state counts the indices handed out in the current epoch, which is
  exact for a ``DataLoader`` with ``num_workers=0`` (it draws indices one batch at a time).
* ``ResumableDataLoader(dataset, batch_size, seed=..., ...)``: a ``DataLoader`` over a
  ``ResumableSampler`` that counts the batches it has *delivered*, so its state is exact with worker
  processes too. It has ``state_dict``/``load_state_dict``, which Lightning looks for: Lightning saves
  the state in its checkpoints and restores it before the first batch, so a Lightning run resumed
  mid-epoch goes on with the next batch.

    sampler = ResumableSampler(len(ds), seed=0)
    loader = DataLoader(ds, batch_size=32, sampler=sampler)
    ...save:   torch.save({"sampler": sampler.state_dict(), ...}, tmp)
    ...resume: sampler.load_state_dict(state["sampler"])   # before iterating the loader again
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["ResumableSampler", "ResumableDataLoader"]


class ResumableSampler(Sampler):
    """Shuffles ``range(n)`` per epoch from ``(seed, epoch)``; resumes in the middle of an epoch."""

    def __init__(self, n: int, seed: int = 0) -> None:
        if n < 0:
            raise ValueError("n must be >= 0")
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self.consumed = 0  # indices handed out in self.epoch
        self._skip = 0  # set by load_state_dict: where the next iteration starts

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` on the next iteration (Lightning calls this; a plain loop does too).
        Setting the epoch a loaded state is in keeps its position."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._skip = 0
            self.consumed = 0

    def order(self, epoch: int) -> "list[int]":
        """The full order of epoch ``epoch``."""
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + int(epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)  # read when iteration starts, after set_epoch/load_state_dict
        start, self._skip = self._skip, 0
        self.consumed = start
        for index in order[start:]:
            self.consumed += 1
            yield index

    def state_dict(self) -> Dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"sampler state is for seed {state['seed']}, this sampler has seed {self.seed}")
        self.epoch = int(state["epoch"])
        self.consumed = self._skip = min(int(state["consumed"]), self.n)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` whose state is the batches it delivered."""

    def __init__(self, dataset: Any, batch_size: int = 1, seed: int = 0, sampler: Optional[ResumableSampler] = None,
                 **kwargs: Any) -> None:
        if kwargs.pop("shuffle", None):
            raise ValueError("ResumableDataLoader shuffles through its ResumableSampler; leave shuffle unset")
        if sampler is None:
            sampler = ResumableSampler(len(dataset), seed=seed)
        if not isinstance(sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs a kiln_trainer.torch.ResumableSampler")
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._delivered = 0  # samples of the current epoch handed to the training loop
        self._epoch_start = 0

    def __iter__(self):  # type: ignore[override]
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        self._epoch_start = sampler._skip
        self._delivered = 0
        for batch in super().__iter__():
            self._delivered += self.batch_size or 1
            yield batch

    def state_dict(self) -> Dict[str, Any]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        consumed = min(self._epoch_start + self._delivered, sampler.n)
        return {"seed": sampler.seed, "epoch": sampler.epoch, "consumed": consumed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)  # type: ignore[union-attr]
