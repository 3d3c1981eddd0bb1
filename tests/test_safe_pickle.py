"""Data-only unpickling: CIFAR-10 batches that would run code are refused before anything runs;
real data (NumPy arrays, lists, dicts, bytes, str) round-trips."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_cifar10
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workers.datasets.registry import DATASETS
from workers.datasets.safe_pickle import UnsafePickleError, load_data_pickle, loads_data_pickle


class _RunsShell:
    """Unpickling this calls os.system -- what a hostile "dataset" file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class _Evals:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, ("__import__('os').getpid()",)


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_naming_os_system_is_refused_before_it_runs(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [_RunsShell(marker)]},
                           protocol=protocol)
    assert pickle.loads(payload) == 0 or marker.exists()  # the plain loader really runs it
    marker.unlink()
    with pytest.raises(UnsafePickleError, match="system"):
        loads_data_pickle(payload)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="eval"):
        loads_data_pickle(pickle.dumps(_Evals(), protocol=protocol))


def test_the_cifar10_loader_refuses_a_malicious_batch(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = pickle.loads(batch.read_bytes())
    batch.write_bytes(pickle.dumps(good | {"labels": [_RunsShell(marker)]}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"test_batch: refused to load global (posix|os)\.system"):
        DATASETS.get("cifar10").tensors("test", 4, tmp_path)
    assert not marker.exists()


def test_the_cifar10_loader_still_reads_real_layout(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, per_batch=3, n_test=5)
    x, y = DATASETS.get("cifar10").tensors("test", None, tmp_path)
    assert x.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal((x * 255).round().byte().numpy(), written["test"][0])
    np.testing.assert_array_equal(y.numpy(), written["test"][1])


arrays = hnp.arrays(dtype=st.sampled_from([np.uint8, np.int64, np.float32]),
                    shape=hnp.array_shapes(max_dims=3, max_side=5))
data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.binary(max_size=10) | arrays,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=8,
)


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=150, deadline=None)
@given(value=data, protocol=st.sampled_from([2, 3, 4, 5]))
def test_plain_data_round_trips(value: object, protocol: int) -> None:
    assert _same(loads_data_pickle(pickle.dumps(value, protocol=protocol), encoding="bytes"), value)


def test_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(_Evals()))
    with pytest.raises(UnsafePickleError, match=str(path)):
        load_data_pickle(path)
