"""Datasets: a registry of loaders whose names equal ``workers.contract.catalog.DATASETS``.

Every dataset yields ``(x, y)`` with ``x`` a float32 (C, H, W) tensor in [0, 1] (no
normalisation: that lives inside the model) and ``y`` an int. Nothing is downloaded unless a
caller passes ``download=True`` (only cifar10 can). Missing files raise
:class:`DatasetNotFoundError` (a ``FileNotFoundError``) whose message says how to get them.

Roots: ``root`` argument, else ``$RAMP_DATA_ROOT/<name>``, else the dataset's default (see each
module).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from torch.utils.data import Dataset

from workers.contract import catalog
from workers.datasets.base import (
    DATA_ROOT_ENV,
    DatasetLoader,
    DatasetNotFoundError,
    Points,
    check_split,
    resolve_root,
)
from workers.datasets.npz import load_npz, validate_points
from workers.datasets.registry import DATASETS

_MODULES = ("mnist5k", "fashion_mnist", "cifar10", "imagefolder")
for _module in _MODULES:
    importlib.import_module(f"workers.datasets.{_module}")

Root = str | os.PathLike[str] | None


def load_dataset(name: str, split: str, root: Root = None, *, augment: bool | None = None,
                 download: bool = False, **options: Any) -> Dataset:
    """The ``split`` ("train" or "test") of dataset ``name``; ``augment`` defaults to train-only.

    ``options`` go to the loader (imagefolder: ``image_size``, ``resize_size``).
    """
    loader = DATASETS.get(name)
    split = check_split(split)
    if augment is None:
        augment = split == "train"
    return loader.dataset(split, resolve_root(name, root, loader.default_root), augment=augment,
                          download=download, **options)


def load_tensors(name: str, split: str, n: int | None = None, root: Root = None,
                 **options: Any) -> Points:
    """The first ``n`` points (all when None) of a split as ``(x, y)`` tensors, never augmented."""
    if n is not None and n < 1:
        raise ValueError(f"n must be positive or None, got {n}")
    loader = DATASETS.get(name)
    return loader.tensors(check_split(split), n, resolve_root(name, root, loader.default_root), **options)


def num_classes(name: str, root: Root = None) -> int:
    """The number of classes (from the catalog, or read from the data for imagefolder)."""
    loader = DATASETS.get(name)
    known = catalog.DATASETS[name].num_classes
    return known if known is not None else loader.num_classes(resolve_root(name, root, loader.default_root))


__all__ = [
    "DATASETS", "DATA_ROOT_ENV", "DatasetLoader", "DatasetNotFoundError", "load_dataset", "load_npz",
    "load_tensors", "num_classes", "validate_points",
]
