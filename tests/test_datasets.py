"""The dataset loaders on real data (mnist-5k, the Debian Fashion-MNIST) and on small fixtures
written in the real on-disk formats (CIFAR-10 pickles, IDX, ImageFolder PNGs, npz)."""

from __future__ import annotations

import gzip
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import idx_bytes, write_cifar10, write_fashion_mnist, write_idx, write_imagefolder
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.utils.data import DataLoader

from workers.contract import catalog
from workers.contract.registry import UnknownNameError
from workers.datasets import (
    DATA_ROOT_ENV,
    DATASETS,
    DatasetNotFoundError,
    load_dataset,
    load_npz,
    load_tensors,
    mnist5k,
    num_classes,
)
from workers.datasets import fashion_mnist as fmnist_module
from workers.datasets.idx import IdxFormatError, parse_idx, read_idx

FASHION_ROOT = Path(fmnist_module.DEFAULT_ROOT)


# ---------------------------------------------------------------- registry and front door


def test_registry_names_equal_catalog():
    assert DATASETS.names() == sorted(catalog.DATASETS)


def test_unknown_dataset_lists_available_names():
    with pytest.raises(UnknownNameError) as info:
        load_dataset("mnist-50k", "train")
    for name in catalog.DATASETS:
        assert name in str(info.value)


def test_bad_split_and_bad_n_are_rejected():
    with pytest.raises(ValueError, match="split 'val'.*train, test"):
        load_dataset("mnist-5k", "val")
    with pytest.raises(ValueError, match="n must be positive"):
        load_tensors("mnist-5k", "test", n=0)


def test_loaders_without_options_reject_them():
    with pytest.raises(TypeError, match="image_size"):
        load_dataset("mnist-5k", "train", image_size=32)


# ---------------------------------------------------------------- mnist-5k (real data)


def test_mnist5k_shapes_range_and_labels():
    x_train, y_train = load_tensors("mnist-5k", "train")
    x_test, y_test = load_tensors("mnist-5k", "test")
    assert x_train.shape == (4000, *catalog.DATASETS["mnist-5k"].shape)
    assert x_test.shape == (1000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        # Values are exactly k/255: the loader must not rescale or smooth the pixels.
        assert torch.equal(torch.round(x * 255) / 255, x)
    assert torch.bincount(y_train).tolist() == [400] * 10
    assert torch.bincount(y_test).tolist() == [100] * 10
    assert num_classes("mnist-5k") == 10


def test_mnist5k_split_is_disjoint_complete_and_matches_the_csv_rows():
    images, labels = mnist5k.load_arrays()
    train, test = mnist5k.split_indices(labels)
    assert len(set(train.tolist())) == 4000 and len(set(test.tolist())) == 1000
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(5000))
    x_test, y_test = load_tensors("mnist-5k", "test")
    assert torch.equal(x_test, torch.from_numpy(images[test]).float() / 255)
    assert torch.equal(y_test, torch.from_numpy(labels[test]))
    # The file is sorted by digit; the split is shuffled so that the first points mix the digits.
    assert len(set(y_test[:50].tolist())) >= 8


def test_mnist5k_split_is_deterministic_and_ignores_global_rng():
    _, labels = mnist5k.load_arrays()
    np.random.seed(123)
    torch.manual_seed(123)
    first = mnist5k.split_indices(labels)
    np.random.seed(7)
    second = mnist5k.split_indices(labels)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    mnist5k.load_arrays.cache_clear()
    mnist5k._split_dataset.cache_clear()
    x_again, y_again = load_tensors("mnist-5k", "train", n=64)
    assert torch.equal(y_again, torch.from_numpy(labels[first[0][:64]]))
    assert x_again.shape == (64, 1, 28, 28)


def test_mnist5k_loads_fast():
    mnist5k.load_arrays.cache_clear()
    start = time.perf_counter()
    mnist5k.load_arrays()
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"parsing the 5k CSV took {elapsed:.2f}s"


def test_mnist5k_dataset_items_match_tensors_and_batch_in_a_dataloader():
    ds = load_dataset("mnist-5k", "test")
    x, y = load_tensors("mnist-5k", "test", n=5)
    for i in range(5):
        xi, yi = ds[i]
        assert torch.equal(xi, x[i]) and yi == int(y[i]) and isinstance(yi, int)
    xb, yb = next(iter(DataLoader(load_dataset("mnist-5k", "train"), batch_size=16, shuffle=True)))
    assert xb.shape == (16, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64


# ---------------------------------------------------------------- IDX parsing


def test_parse_idx_decodes_a_hand_written_file():
    header = bytes([0, 0, 0x08, 2]) + struct.pack(">II", 2, 3)
    array = parse_idx(header + bytes(range(6)))
    assert array.dtype == np.uint8 and array.tolist() == [[0, 1, 2], [3, 4, 5]]
    int16 = bytes([0, 0, 0x0B, 1]) + struct.pack(">I", 2) + struct.pack(">hh", -2, 513)
    assert parse_idx(int16).tolist() == [-2, 513]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "too short"),
        (bytes([1, 0, 0x08, 1]) + struct.pack(">I", 1) + b"\x00", "bad magic"),
        (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00", "unknown IDX type code 0x07"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 1), "truncated header"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 4) + b"\x00" * 3, "does not match shape"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 4) + b"\x00" * 5, "does not match shape"),
    ],
)
def test_parse_idx_rejects_malformed_files(data: bytes, message: str):
    with pytest.raises(IdxFormatError, match=message):
        parse_idx(data)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
        elements={"allow_nan": False},
    )
)
def test_parse_idx_round_trips_any_array(array: np.ndarray):
    decoded = parse_idx(idx_bytes(array))
    assert decoded.shape == array.shape
    assert decoded.dtype == array.dtype.newbyteorder("=")
    assert np.array_equal(decoded, array)


def test_read_idx_detects_gzip_by_content(tmp_path: Path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    plain = write_idx(tmp_path / "a-idx2-ubyte", array)
    # A compressed file without a .gz suffix is still decompressed.
    packed = tmp_path / "b-idx2-ubyte"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert np.array_equal(read_idx(plain), array) and np.array_equal(read_idx(packed), array)


# ---------------------------------------------------------------- fashion-mnist


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_fixture_round_trips(tmp_path: Path, gz: bool):
    written = write_fashion_mnist(tmp_path, n_train=12, n_test=7, gz=gz)
    for split in ("train", "test"):
        images, labels = written[split]
        x, y = load_tensors("fashion-mnist", split, root=tmp_path)
        assert x.shape == (len(images), 1, 28, 28)
        assert torch.equal(x, torch.from_numpy(images[:, None]).float() / 255)
        assert y.tolist() == labels.tolist()
        ds = load_dataset("fashion-mnist", split, root=tmp_path)
        assert len(ds) == len(images) and torch.equal(ds[3][0], x[3]) and ds[3][1] == int(labels[3])
    assert load_tensors("fashion-mnist", "test", n=4, root=tmp_path)[0].shape == (4, 1, 28, 28)


def test_fashion_mnist_data_root_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    written = write_fashion_mnist(tmp_path / "fashion-mnist", n_train=5, n_test=3)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    _, y = load_tensors("fashion-mnist", "test")
    assert y.tolist() == written["test"][1].tolist()


def test_fashion_mnist_missing_directory_says_how_to_get_it(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", "train", root=tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--data-root" in message
    assert str(tmp_path / "nowhere") in message


def test_fashion_mnist_missing_file_and_inconsistent_files(tmp_path: Path):
    write_fashion_mnist(tmp_path, n_train=6, n_test=4)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_tensors("fashion-mnist", "test", root=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8), gz=True)
    with pytest.raises(ValueError, match="expected 4 uint8 labels"):
        load_tensors("fashion-mnist", "test", root=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(4, 10, dtype=np.uint8), gz=True)
    with pytest.raises(ValueError, match="label 10 outside"):
        load_tensors("fashion-mnist", "test", root=tmp_path)


def test_fashion_mnist_real_debian_package():
    # The CI image installs the dataset-fashion-mnist Debian package; this reads the real files.
    assert FASHION_ROOT.is_dir(), f"{FASHION_ROOT} missing: apt-get install dataset-fashion-mnist"
    x_train, y_train = load_tensors("fashion-mnist", "train")
    x_test, y_test = load_tensors("fashion-mnist", "test")
    assert x_train.shape == (60000, *catalog.DATASETS["fashion-mnist"].shape)
    assert x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(y_train).tolist() == [6000] * 10
    assert torch.bincount(y_test).tolist() == [1000] * 10
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert 0.2 < x_test.mean() < 0.4  # real clothing images, not noise (mean ~0.286)
    ds = load_dataset("fashion-mnist", "test")
    assert torch.equal(ds[9999][0], x_test[9999]) and ds[9999][1] == int(y_test[9999])


# ---------------------------------------------------------------- cifar10


def test_cifar10_fixture_reads_exactly_what_was_written(tmp_path: Path):
    written = write_cifar10(tmp_path, per_batch=4, n_test=6)
    for split in ("train", "test"):
        images, labels = written[split]
        x, y = load_tensors("cifar10", split, root=tmp_path)
        assert x.shape == (len(images), *catalog.DATASETS["cifar10"].shape)
        assert torch.equal(x, torch.from_numpy(images).float() / 255)
        assert y.tolist() == labels.tolist()
        ds = load_dataset("cifar10", split, root=tmp_path, augment=False)
        assert len(ds) == len(images)
        # The Dataset path (PIL + ToTensor) and the fast tensor path agree bit for bit.
        assert all(torch.equal(ds[i][0], x[i]) and ds[i][1] == int(labels[i]) for i in range(len(ds)))
    assert num_classes("cifar10", root=tmp_path) == 10


def test_cifar10_root_may_be_the_batches_folder_itself(tmp_path: Path):
    written = write_cifar10(tmp_path)
    _, y = load_tensors("cifar10", "test", n=3, root=tmp_path / "cifar-10-batches-py")
    assert y.tolist() == written["test"][1][:3].tolist()


def test_torchvision_md5_check_rejects_fixture_but_local_reader_accepts(tmp_path: Path):
    from torchvision.datasets import CIFAR10

    write_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        CIFAR10(tmp_path, train=False, download=False)
    assert len(load_dataset("cifar10", "test", root=tmp_path)) == 6


def test_cifar10_file_names_are_torchvisions():
    # The loader spells torchvision's names out (to register without importing it); they must agree.
    from torchvision.datasets import CIFAR10

    from workers.datasets import cifar10

    assert CIFAR10.base_folder == cifar10.BASE_FOLDER
    assert list(cifar10.TRAIN_FILES) == [name for name, _ in CIFAR10.train_list]
    assert list(cifar10.TEST_FILES) == [name for name, _ in CIFAR10.test_list]
    assert CIFAR10.meta["filename"] == cifar10.META_FILE


def test_cifar10_train_augmentation_is_padded_crop_and_flip(tmp_path: Path):
    written = write_cifar10(tmp_path, per_batch=2)
    image = torch.from_numpy(written["train"][0][0]).float() / 255
    ds = load_dataset("cifar10", "train", root=tmp_path)  # augment defaults to True for train
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    # Random pixels make the (offset, flip) of every augmented view unique.
    views = {(r, c, flip): padded[:, r:r + 32, c:c + 32].flip(-1) if flip else padded[:, r:r + 32, c:c + 32]
             for r in range(9) for c in range(9) for flip in (False, True)}
    torch.manual_seed(0)
    seen = set()
    for _ in range(300):
        x, y = ds[0]
        assert y == int(written["train"][1][0])
        matches = [key for key, view in views.items() if torch.equal(x, view)]
        assert len(matches) == 1, "not a crop of the 4-padded image, possibly flipped"
        seen.add(matches[0])
    # Every offset in -4..4 and both flips occur: padding 4 and p=0.5 flips, not something milder.
    assert {r for r, _, _ in seen} == set(range(9)) and {c for _, c, _ in seen} == set(range(9))
    assert {flip for _, _, flip in seen} == {False, True}


def test_cifar10_missing_data_says_where_to_put_it(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py") as info:
        load_dataset("cifar10", "train", root=tmp_path)
    assert "--data-root" in str(info.value)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks data_batch_3"):
        load_tensors("cifar10", "test", root=tmp_path)


# ---------------------------------------------------------------- imagefolder

SMALL = {"image_size": 16, "resize_size": 18}


def test_imagefolder_classes_labels_and_shapes(tmp_path: Path):
    write_imagefolder(tmp_path, classes=("cat", "dog", "fox"), n_per_class=3, size=(20, 24))
    assert num_classes("imagefolder", root=tmp_path) == 3
    for split in ("train", "test"):
        ds = load_dataset("imagefolder", split, root=tmp_path, **SMALL)
        assert len(ds) == 9
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 16, 16) and x.min() >= 0.0 and x.max() <= 1.0
            assert ["cat", "dog", "fox"][y] == Path(ds.samples[i][0]).parent.name


def test_imagefolder_eval_transform_is_resize_then_center_crop(tmp_path: Path):
    written = write_imagefolder(tmp_path, classes=("a", "b"), n_per_class=2, size=(20, 24))
    # Resize(20) leaves a 20x24 image unchanged, so CenterCrop(20) keeps columns 2..21 exactly.
    ds = load_dataset("imagefolder", "test", root=tmp_path, image_size=20, resize_size=20)
    for i in range(len(ds)):
        x, y = ds[i]
        path = Path(ds.samples[i][0])
        original = written["val"][path.parent.name][int(path.stem)]
        assert torch.equal(x, torch.from_numpy(original[:, 2:22]).permute(2, 0, 1).float() / 255)


def test_imagefolder_order_is_a_fixed_class_mixing_permutation(tmp_path: Path):
    write_imagefolder(tmp_path, n_per_class=3)
    first = load_dataset("imagefolder", "test", root=tmp_path, **SMALL)
    second = load_dataset("imagefolder", "test", root=tmp_path, **SMALL)
    assert first.samples == second.samples
    assert sorted(first.samples) == sorted(first.samples, key=lambda s: (s[1], s[0]))  # labels follow dirs
    assert first.samples != sorted(first.samples)  # not class-sorted: "first n" mixes classes
    x, y = load_tensors("imagefolder", "test", n=4, root=tmp_path, **SMALL)
    assert x.shape == (4, 3, 16, 16)
    assert all(torch.equal(x[i], first[i][0]) and int(y[i]) == first[i][1] for i in range(4))


def test_imagefolder_val_uses_train_class_indices(tmp_path: Path):
    write_imagefolder(tmp_path, classes=("cat", "dog", "fox"), n_per_class=2)
    shutil.rmtree(tmp_path / "val" / "dog")
    _, y = load_tensors("imagefolder", "test", root=tmp_path, **SMALL)
    assert sorted(y.tolist()) == [0, 0, 2, 2]  # fox keeps index 2 although dog is absent
    (tmp_path / "val" / "zebra").mkdir()
    with pytest.raises(ValueError, match="zebra"):
        load_dataset("imagefolder", "test", root=tmp_path, **SMALL)


def test_imagefolder_accepts_test_dir_and_augments_train(tmp_path: Path):
    write_imagefolder(tmp_path, n_per_class=2, splits=("train", "test"))
    assert len(load_dataset("imagefolder", "test", root=tmp_path, **SMALL)) == 6
    x, _ = load_dataset("imagefolder", "train", root=tmp_path, **SMALL)[0]
    assert x.shape == (3, 16, 16)


def test_imagefolder_missing_tree_errors(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match="--data-root"):
        num_classes("imagefolder")
    with pytest.raises(DatasetNotFoundError, match="train"):
        load_dataset("imagefolder", "train", root=tmp_path)
    write_imagefolder(tmp_path, splits=("train",))
    with pytest.raises(DatasetNotFoundError, match="val"):
        load_dataset("imagefolder", "test", root=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("imagefolder", "train", root=tmp_path, image_size=32, resize_size=16)


# ---------------------------------------------------------------- npz


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_load_npz_valid(tmp_path: Path):
    x = np.random.default_rng(0).random((5, 3, 8, 8)).astype(np.float64)
    y = np.array([0, 1, 2, 3, 9], dtype=np.int32)
    xt, yt = load_npz(_save(tmp_path / "p.npz", x=x, y=y))
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64
    assert torch.allclose(xt, torch.from_numpy(x).float()) and yt.tolist() == y.tolist()


GOOD_X = np.full((3, 1, 4, 4), 0.5, dtype=np.float32)
GOOD_Y = np.array([0, 1, 2])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": GOOD_X}, r"missing array\(s\) y; found x"),
        ({"images": GOOD_X, "labels": GOOD_Y}, r"missing array\(s\) x, y"),
        ({"x": GOOD_X[0], "y": GOOD_Y}, "x must have rank 4"),
        ({"x": GOOD_X, "y": GOOD_Y[:, None]}, "y must have rank 1"),
        ({"x": GOOD_X * 3, "y": GOOD_Y}, r"\[0, 1\], found 1.5..1.5"),
        ({"x": GOOD_X - 1, "y": GOOD_Y}, r"\[0, 1\], found -0.5"),
        ({"x": GOOD_X, "y": GOOD_Y[:2]}, "3 points but y has 2 labels"),
        ({"x": GOOD_X, "y": GOOD_Y + 0.5}, "integer class labels"),
        ({"x": (GOOD_X * 255).astype(np.uint8), "y": GOOD_Y}, "divide 0-255 pixels by 255"),
        ({"x": np.where(GOOD_X > 0, np.nan, 0).astype(np.float32), "y": GOOD_Y}, "NaN"),
        ({"x": GOOD_X, "y": -GOOD_Y - 1}, "labels must be >= 0"),
        ({"x": GOOD_X[:0], "y": GOOD_Y[:0]}, "no points"),
    ],
)
def test_load_npz_rejects_bad_files(tmp_path: Path, arrays: dict[str, np.ndarray], message: str):
    with pytest.raises(ValueError, match=message):
        load_npz(_save(tmp_path / "bad.npz", **arrays))


def test_load_npz_missing_or_unreadable_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no file"):
        load_npz(tmp_path / "absent.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"definitely not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(junk)
