"""The torchvision half of ``cifar10`` (see that module): the reader class and the transforms.

Kept apart so that importing the datasets registry does not import torchvision, which pulls in
``torch._dynamo`` (~1 s of start-up for a driver or an evaluation task, which build no optimizer;
a training process imports dynamo anyway, with its first optimizer); imported when data is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torchvision import transforms
from torchvision.datasets import CIFAR10, VisionDataset

from workers.datasets.cifar10 import NUM_CLASSES
from workers.datasets.safe_pickle import load_data_pickle


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


def download_release(parent: Path) -> None:
    """The only network access in the datasets package, and only on explicit request."""
    CIFAR10(parent, train=True, download=True)


def train_transform() -> transforms.Compose:
    return transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )


def test_transform() -> transforms.ToTensor:
    return transforms.ToTensor()
