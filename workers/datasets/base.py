"""What every dataset loader provides, the error for missing data, and an in-memory image set.

Loaders are objects (one per registry name) because a dataset needs three related answers -- the
``Dataset`` of a split, its first ``n`` points as tensors, and its number of classes -- and a
loader may answer the tensor question faster than by iterating its ``Dataset``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = get_args(Split)
Points = tuple[Tensor, Tensor]  # (x float (N, C, H, W) in [0, 1], y int64 (N,))

# Parent directory under which each dataset has a sub-directory named like the dataset
# (e.g. $RAMP_DATA_ROOT/cifar10); lets a cluster point every worker at shared storage at once.
DATA_ROOT_ENV = "RAMP_DATA_ROOT"


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not where we looked; the message says how to get them.

    A ``FileNotFoundError`` so callers (the CLI, the job driver) can report it as a user error
    without a traceback.
    """


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


def resolve_root(name: str, root: str | os.PathLike[str] | None, default: str | None) -> Path | None:
    """The directory to read ``name`` from: ``root``, else ``$RAMP_DATA_ROOT/<name>``, else ``default``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser() / name
    return Path(default) if default is not None else None


class ImageArrayDataset(Dataset):
    """Images kept as uint8 (N, C, H, W) and converted to float [0, 1] per item.

    uint8 storage keeps Fashion-MNIST's 60k training images at 47 MB instead of 188 MB as floats.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {labels.shape} does not match {images.shape[0]} images")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].float().div_(255.0), int(self.labels[index])

    def tensors(self, n: int | None = None) -> Points:
        end = len(self) if n is None else min(n, len(self))
        return self.images[:end].float().div_(255.0), self.labels[:end].clone()


def stack_dataset(dataset: Dataset, n: int | None) -> Points:
    """The first ``n`` items of any (x, y) dataset as two tensors."""
    total = len(dataset)  # type: ignore[arg-type]
    end = total if n is None else min(n, total)
    if end == 0:
        raise ValueError("the dataset split is empty")
    xs, ys = zip(*(dataset[i] for i in range(end)), strict=True)
    return torch.stack(list(xs)), torch.tensor(ys, dtype=torch.int64)


class DatasetLoader:
    """One named dataset. Subclasses implement ``dataset`` and ``num_classes``.

    ``options`` are loader-specific keyword arguments (e.g. ``image_size`` for imagefolder);
    loaders that take none reject them.
    """

    name: str = ""
    default_root: str | None = None  # used when neither ``root`` nor $RAMP_DATA_ROOT is given

    def dataset(
        self, split: Split, root: Path | None, *, augment: bool, download: bool, **options: Any
    ) -> Dataset:
        raise NotImplementedError

    def tensors(self, split: Split, n: int | None, root: Path | None, **options: Any) -> Points:
        """The first ``n`` points without augmentation; override when there is a faster path."""
        return stack_dataset(self.dataset(split, root, augment=False, download=False, **options), n)

    def num_classes(self, root: Path | None) -> int:
        raise NotImplementedError

    def __call__(self, split: Split, root: Path | None, *, augment: bool, download: bool,
                 **options: Any) -> Dataset:
        return self.dataset(split, root, augment=augment, download=download, **options)


def reject_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise TypeError(f"dataset {name!r} takes no options; got {', '.join(sorted(options))}")
