"""Small on-disk datasets in the real formats, for tests that exercise the real loaders.

Each writer returns the arrays it wrote so a test can compare what a loader reads back. The
writers are independent of ``workers.datasets`` (struct / pickle / PIL directly), so a bug in a
reader cannot be mirrored by the writer.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
                  np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (big-endian header and values)."""
    big = array.astype(array.dtype.newbyteorder(">"))
    code = IDX_TYPE_CODES[big.dtype]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big.tobytes(order="C")


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_fashion_mnist(root: Path, n_train: int = 30, n_test: int = 20, *, gz: bool = True,
                        seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four Fashion-MNIST IDX files (random pixels) under their official names."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        out[split] = (images, labels)
    return out


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, *,
                  seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta, laid out as
    the official release: each batch a latin-1 pickle of a dict with ``data`` (N, 3072) uint8
    (channel-major rows: 1024 R, 1024 G, 1024 B), ``labels`` (list of int), ``batch_label`` and
    ``filenames``. Returns ``{"train": (x, y), "test": (x, y)}`` with ``x`` (N, 3, 32, 32) uint8."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, size=n)
        entry = {"batch_label": name.encode(), "labels": [int(v) for v in y],
                 "data": x.reshape(n, 3072), "filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        return x, y

    train = [batch(name, per_batch) for name in CIFAR_TRAIN_BATCHES]
    test = batch("test_batch", n_test)
    meta = {"label_names": CIFAR_LABEL_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": test,
    }


def write_imagefolder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), n_per_class: int = 3,
                      size: tuple[int, int] = (20, 24), *, splits: tuple[str, ...] = ("train", "val"),
                      seed: int = 0) -> dict[str, dict[str, list[np.ndarray]]]:
    """``root/<split>/<class>/<i>.png`` RGB PNGs of ``size`` (H, W) with random pixels.

    Returns ``{split: {class: [HWC uint8 image, ...]}}`` in file-name order."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for split in splits:
        out[split] = {}
        for name in classes:
            directory = root / split / name
            directory.mkdir(parents=True, exist_ok=True)
            images = []
            for i in range(n_per_class):
                image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(image).save(directory / f"{i:03d}.png")
                images.append(image)
            out[split][name] = images
    return out
