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
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from workers.datasets.base import DatasetLoader, DatasetNotFoundError, Points, Split, reject_options
from workers.datasets.registry import DATASETS

if TYPE_CHECKING:
    from workers.datasets.cifar10_reader import LocalCIFAR10

# torchvision's names for the release's files (torchvision.datasets.CIFAR10), spelled out here so
# that registering the dataset does not import torchvision (and torch._dynamo with it: ~1 s).
BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
DEFAULT_ROOT = str(Path("~/.cache/ramp/datasets/cifar10").expanduser())
NUM_CLASSES = 10


def batches_parent(root: Path) -> Path:
    """The directory holding ``cifar-10-batches-py`` (``root`` may also be that folder itself)."""
    return root.parent if root.name == BASE_FOLDER and not (root / BASE_FOLDER).is_dir() else root


def require_files(parent: Path) -> None:
    folder = parent / BASE_FOLDER
    needed = [*TRAIN_FILES, *TEST_FILES, META_FILE]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        problem = f"no directory {folder}" if not folder.is_dir() else f"{folder} lacks {', '.join(missing)}"
        raise DatasetNotFoundError(
            f"cifar10: {problem}. Unpack cifar-10-python.tar.gz "
            f"(https://www.cs.toronto.edu/~kriz/cifar.html) so that {parent}/{BASE_FOLDER}/ holds "
            "data_batch_1..5, test_batch and batches.meta, pass that parent directory with "
            "--data-root, or allow a download explicitly (download=True)"
        )


class Cifar10(DatasetLoader):
    name = "cifar10"
    default_root = DEFAULT_ROOT

    def _open(self, split: Split, root: Path | None, transform: Any, download: bool) -> LocalCIFAR10:
        from workers.datasets.cifar10_reader import LocalCIFAR10, download_release

        parent = batches_parent(Path(DEFAULT_ROOT) if root is None else root)
        if download:
            download_release(parent)
        require_files(parent)
        return LocalCIFAR10(parent, train=split == "train", transform=transform)

    def dataset(self, split: Split, root: Path | None, *, augment: bool, download: bool,
                **options: Any) -> Dataset:
        from workers.datasets.cifar10_reader import test_transform, train_transform

        reject_options(self.name, options)
        transform = train_transform() if augment else test_transform()
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
