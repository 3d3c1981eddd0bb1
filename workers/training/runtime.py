"""Where a training run executes: device, rank, and how models and loaders are prepared.

The loop only talks to a ``Runtime``. ``LocalRuntime`` (one process, CPU or one GPU) is the default;
a distributed runtime (Ray Train: DDP-wrapped model, per-rank shards, all-reduced epoch sums) lives in
``workers/ray_entry/`` and implements the same methods, so the loop never imports Ray.

The data order is a function of (seed, epoch) only: the sampler is a ``DistributedSampler``
(``num_replicas=1`` locally) whose permutation is drawn from ``seed + epoch``, and the loader's own
generator (worker seeds) is re-seeded per epoch. A resumed run therefore sees the same batches as an
uninterrupted one, and a one-worker Ray run the same batches as a local run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from workers.training.rng import epoch_seed


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Runtime(ABC):
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """The rank that evaluates, writes checkpoints and files."""
        return self.rank == 0

    @abstractmethod
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move (and, distributed, wrap) the model; the result is what gets trained."""

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The bare model behind ``prepare_model``'s result (what is saved and evaluated)."""
        return getattr(model, "module", model)

    @abstractmethod
    def prepare_loader(self, loader: DataLoader, *, shuffle: bool, seed: int) -> DataLoader:
        """A loader over this rank's share of ``loader.dataset`` in a (seed, epoch)-determined order."""

    def set_epoch(self, loader: DataLoader, epoch: int) -> None:
        """Fix the data order of ``epoch`` (0-based) before iterating the loader."""
        sampler = loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
            if loader.generator is not None:
                loader.generator.manual_seed(epoch_seed(sampler.seed, epoch))

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over ranks (identity with one process)."""
        return tensor


class LocalRuntime(Runtime):
    """A single process on ``device`` (CUDA when available)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.rank, self.world_size = 0, 1

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def prepare_loader(self, loader: DataLoader, *, shuffle: bool, seed: int) -> DataLoader:
        sampler = DistributedSampler(
            loader.dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed, drop_last=False
        )
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            drop_last=loader.drop_last,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),
            persistent_workers=False,
        )
