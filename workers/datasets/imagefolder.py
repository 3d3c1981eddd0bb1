"""``imagefolder``: an ImageNet-style tree of images read with torchvision's ``ImageFolder``::

    root/train/<class>/*.png|jpg|...
    root/val/<class>/...          (the "test" split; ``root/test/`` is accepted when there is no val/)

Classes are the sub-directories of ``root/train`` (sorted); the test split uses the train split's
class -> index map, so a class missing from ``val/`` cannot shift the labels, and a class present
only in ``val/`` is an error. Images are converted to RGB.

Transforms (sizes are options, defaults are ImageNet's): train ``RandomResizedCrop(image_size)`` +
``RandomHorizontalFlip()``; test / no augmentation ``Resize(resize_size)`` + ``CenterCrop(image_size)``;
then ``ToTensor()``. The samples of each split are stored in a fixed seeded permutation (seed
``ORDER_SEED``), so "the first n points" of a split mix the classes instead of being all class 0.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from workers.datasets.base import DatasetLoader, DatasetNotFoundError, Split
from workers.datasets.registry import DATASETS

IMAGE_SIZE = 224
RESIZE_SIZE = 256
ORDER_SEED = 0
TEST_DIRS = ("val", "test")
LAYOUT = "root/train/<class>/<image> and root/val/<class>/<image>"


def require_root(root: Path | None) -> Path:
    if root is None:
        raise DatasetNotFoundError(f"imagefolder needs a directory laid out as {LAYOUT}; "
                                   "pass it with --data-root")
    if not (root / "train").is_dir():
        raise DatasetNotFoundError(f"imagefolder: no {root / 'train'}; expected {LAYOUT} (pass --data-root)")
    return root


def train_classes(root: Path | None) -> list[str]:
    train_dir = require_root(root) / "train"
    classes = sorted(entry.name for entry in train_dir.iterdir() if entry.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"imagefolder: {train_dir} has no class sub-directories; "
                                   f"expected {LAYOUT}")
    return classes


def split_dir(root: Path, split: Split) -> Path:
    if split == "train":
        return root / "train"
    for name in TEST_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DatasetNotFoundError(f"imagefolder: no {root / 'val'} (or {root / 'test'}) for the test split; "
                               f"expected {LAYOUT}")


class ImageFolderLoader(DatasetLoader):
    """Options: ``image_size`` (default 224) and ``resize_size`` (default 256, the test-time resize)."""

    name = "imagefolder"
    default_root = None  # no sensible default: the user names the tree

    def dataset(self, split: Split, root: Path | None, *, augment: bool, download: bool,
                image_size: int = IMAGE_SIZE, resize_size: int = RESIZE_SIZE) -> Dataset:
        if image_size < 1 or resize_size < image_size:
            raise ValueError("imagefolder: need 1 <= image_size <= resize_size, "
                             f"got image_size={image_size}, resize_size={resize_size}")
        from workers.datasets.imagefolder_reader import FixedClassImageFolder, make_transform

        classes = train_classes(root)
        assert root is not None  # train_classes raised otherwise
        # A test split may lack some classes; every train class must have images.
        return FixedClassImageFolder(split_dir(root, split), classes, allow_empty=split != "train",
                                     transform=make_transform(augment, image_size, resize_size))

    def num_classes(self, root: Path | None) -> int:
        return len(train_classes(root))


DATASETS.add(ImageFolderLoader.name, ImageFolderLoader())
