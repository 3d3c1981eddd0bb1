"""``cifar10``: torchvision's CIFAR-10 (python pickle batches) from a local directory.

``root`` is the directory that contains ``cifar-10-batches-py/`` (torchvision's convention) or that
directory itself. Default: ``$RAMP_DATA_ROOT/cifar10``, else ``~/.cache/ramp/datasets/cifar10``.
Nothing is downloaded unless the caller passes ``download=True``; then torchvision fetches the
archive and verifies its md5.

Reading uses :class:`LocalCIFAR10`, a subclass of torchvision's ``CIFAR10`` that reads the same
files the same way but checks that they exist instead of comparing their md5 with torchvision's
hard-coded digests of the official release. Why: hashing 180 MB on every load costs time on each
Ray worker, and a byte-identical re-pickle of the data (or the small synthetic batches our tests
write) is rejected by the md5 check although it is the same format. Batches are read with a
data-only unpickler (``workers.datasets.safe_pickle``): a file that would run code is refused. The
format itself is still validated: every batch must reshape to (N, 3, 32, 32) uint8 with one
label per image in 0..9.

Train augmentation is the standard one: ``RandomCrop(32, padding=4)`` then
``RandomHorizontalFlip()``; both splits end with ``ToTensor()`` (float [0, 1], no normalisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import CIFAR10, VisionDataset

from workers.datasets.base import DatasetLoader, DatasetNotFoundError, Points, Split, reject_options
from workers.datasets.registry import DATASETS
from workers.datasets.safe_pickle import load_data_pickle

BASE_FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
DEFAULT_ROOT = str(Path("~/.cache/ramp/datasets/cifar10").expanduser())
NUM_CLASSES = 10


class LocalCIFAR10(CIFAR10):
    """torchvision's CIFAR10 reader with the md5 comparison replaced by an existence check and
    ``pickle.load`` replaced by a data-only unpickler.

    Every other behaviour of the parent class is kept (file list, batch layout, HWC conversion,
    PIL output, transforms). Never downloads. A batch that names any global beyond NumPy's array
    rebuilders is refused (``UnsafePickleError``) before anything in it runs.
    """

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}

    def __init__(self, root: str | Path, train: bool = True, transform: Any = None) -> None:
        # VisionDataset's constructor, not CIFAR10's: the parent unpickles with pickle.load.
        VisionDataset.__init__(self, str(root), transform=transform)
        self.train = train
        folder = Path(self.root) / self.base_folder
        images, targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            entry = load_data_pickle(folder / name)
            if not isinstance(entry, dict) or "data" not in entry:
                raise ValueError(f"cifar10: {folder / name} is not a CIFAR-10 batch (no 'data' entry)")
            images.append(np.asarray(entry["data"]))
            targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        self.data = np.vstack(images).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = list(targets)
        meta = load_data_pickle(folder / self.meta["filename"])
        self.classes = meta[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        labels = np.asarray(self.targets)
        if self.data.shape[1:] != (32, 32, 3) or self.data.dtype != np.uint8:
            raise ValueError(f"cifar10 in {root}: images are {self.data.dtype} {self.data.shape}, "
                             "expected uint8 (N, 32, 32, 3)")
        if labels.shape != (len(self.data),):
            raise ValueError(f"cifar10 in {root}: {labels.size} labels for {len(self.data)} images")
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"cifar10 in {root}: labels {labels.min()}..{labels.max()} outside 0..9")


def batches_parent(root: Path) -> Path:
    """The directory holding ``cifar-10-batches-py`` (``root`` may also be that folder itself)."""
    return root.parent if root.name == BASE_FOLDER and not (root / BASE_FOLDER).is_dir() else root


def require_files(parent: Path) -> None:
    folder = parent / BASE_FOLDER
    needed = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        problem = f"no directory {folder}" if not folder.is_dir() else f"{folder} lacks {', '.join(missing)}"
        raise DatasetNotFoundError(
            f"cifar10: {problem}. Unpack cifar-10-python.tar.gz "
            f"(https://www.cs.toronto.edu/~kriz/cifar.html) so that {parent}/{BASE_FOLDER}/ holds "
            "data_batch_1..5, test_batch and batches.meta, pass that parent directory with "
            "--data-root, or allow a download explicitly (download=True)"
        )


def train_transform() -> transforms.Compose:
    return transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )


class Cifar10(DatasetLoader):
    name = "cifar10"
    default_root = DEFAULT_ROOT

    def _open(self, split: Split, root: Path | None, transform: Any, download: bool) -> LocalCIFAR10:
        parent = batches_parent(Path(DEFAULT_ROOT) if root is None else root)
        if download:
            # The only network access in the datasets package, and only on explicit request.
            CIFAR10(parent, train=True, download=True)
        require_files(parent)
        return LocalCIFAR10(parent, train=split == "train", transform=transform)

    def dataset(self, split: Split, root: Path | None, *, augment: bool, download: bool,
                **options: Any) -> Dataset:
        reject_options(self.name, options)
        transform = train_transform() if augment else transforms.ToTensor()
        return self._open(split, root, transform, download)

    def tensors(self, split: Split, n: int | None, root: Path | None, **options: Any) -> Points:
        reject_options(self.name, options)
        data = self._open(split, root, None, download=False)
        end = len(data.data) if n is None else min(n, len(data.data))
        # Same values as ToTensor (HWC uint8 -> CHW / 255) without building PIL images.
        x = torch.from_numpy(data.data[:end]).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        return x, torch.tensor(data.targets[:end], dtype=torch.int64)

    def num_classes(self, root: Path | None) -> int:
        return NUM_CLASSES


DATASETS.add(Cifar10.name, Cifar10())
