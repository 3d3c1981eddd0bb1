"""The torchvision half of ``imagefolder`` (see that module): the reader class and the transforms.

Kept apart so that importing the datasets registry does not import torchvision, which pulls in
``torch._dynamo`` (~1 s of start-up for a driver or an evaluation task, which build no optimizer;
a training process imports dynamo anyway, with its first optimizer); imported when data is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torchvision import transforms
from torchvision.datasets import ImageFolder

from workers.datasets.imagefolder import ORDER_SEED


class FixedClassImageFolder(ImageFolder):
    """An ImageFolder whose classes come from elsewhere (the train split) and whose sample order
    is a fixed permutation."""

    def __init__(self, root: Path, classes: list[str], transform: Any = None, *, allow_empty: bool) -> None:
        self._given_classes = classes
        super().__init__(str(root), transform=transform, allow_empty=allow_empty)
        order = np.random.default_rng(ORDER_SEED).permutation(len(self.samples))
        self.samples = [self.samples[i] for i in order]
        self.imgs = self.samples
        self.targets = [target for _, target in self.samples]

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        present = sorted(entry.name for entry in Path(directory).iterdir() if entry.is_dir())
        unknown = sorted(set(present) - set(self._given_classes))
        if unknown:
            raise ValueError(f"imagefolder: {directory} has classes not in the train split: "
                             f"{', '.join(unknown)}")
        return self._given_classes, {name: i for i, name in enumerate(self._given_classes)}


def make_transform(augment: bool, image_size: int, resize_size: int) -> transforms.Compose:
    if augment:
        steps = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(resize_size), transforms.CenterCrop(image_size)]
    return transforms.Compose([*steps, transforms.ToTensor()])
