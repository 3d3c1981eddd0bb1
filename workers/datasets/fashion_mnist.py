"""``fashion-mnist``: the IDX files of Fashion-MNIST from a local directory (never downloaded).

Default directory: ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package
``dataset-fashion-mnist``), overridable with ``root`` (``--data-root``) or ``$RAMP_DATA_ROOT``.
Expected files (each either gzip-compressed with a ``.gz`` suffix or plain)::

    train-images-idx3-ubyte   train-labels-idx1-ubyte   (60,000 images)
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte    (10,000 images)

Splits are the official ones, in file order. No augmentation (as for MNIST): ``augment`` is a
no-op.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from workers.datasets.base import (
    DatasetLoader,
    DatasetNotFoundError,
    ImageArrayDataset,
    Points,
    Split,
    reject_options,
)
from workers.datasets.idx import read_idx
from workers.datasets.registry import DATASETS

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
NUM_CLASSES = 10
FILE_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}
HOW_TO_GET = (
    "install it with `apt-get install dataset-fashion-mnist` (files land in "
    f"{DEFAULT_ROOT}), or put the four *-idx?-ubyte[.gz] files in a directory and pass it "
    "with --data-root"
)


def find_file(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(f"fashion-mnist: neither {stem}.gz nor {stem} in {root}; {HOW_TO_GET}")


@lru_cache(maxsize=4)
def load_split(root: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 1, 28, 28) and labels int64 (N,), validated against each other."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"fashion-mnist: no directory {root}; {HOW_TO_GET}")
    prefix = FILE_PREFIX[split]
    images_path = find_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = find_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} "
                         f"{images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (images.shape[0],):
        raise ValueError(f"{labels_path}: expected {images.shape[0]} uint8 labels, got {labels.dtype} "
                         f"{labels.shape}")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{labels_path}: label {labels.max()} outside 0-{NUM_CLASSES - 1}")
    return images[:, None], labels.astype(np.int64)


class FashionMnist(DatasetLoader):
    name = "fashion-mnist"
    default_root = DEFAULT_ROOT

    def _root(self, root: Path | None) -> Path:
        return Path(DEFAULT_ROOT) if root is None else root

    def dataset(self, split: Split, root: Path | None, *, augment: bool, download: bool,
                **options: Any) -> Dataset:
        reject_options(self.name, options)
        return ImageArrayDataset(*load_split(self._root(root), split))

    def tensors(self, split: Split, n: int | None, root: Path | None, **options: Any) -> Points:
        reject_options(self.name, options)
        images, labels = load_split(self._root(root), split)
        return ImageArrayDataset(images[:n], labels[:n]).tensors()

    def num_classes(self, root: Path | None) -> int:
        return NUM_CLASSES


DATASETS.add(FashionMnist.name, FashionMnist())
