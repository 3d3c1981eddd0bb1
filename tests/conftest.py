"""Suite-wide settings: deterministic and light on a 2-core machine; the repository root on the import
path (helpers shared with the benchmarks live in bench/, e.g. bench.pg)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.append(ROOT)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:  # the service tests run without torch in the import path
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray_local():
    """An in-process local Ray (2 CPUs, no dashboard) for one test module of Ray Train / Tune tests."""
    import shutil
    import tempfile

    import ray

    tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_TMPDIR", "RAY_ADDRESS")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=tmp)
    os.environ.pop("RAY_ADDRESS", None)
    if ray.is_initialized():  # a connection left by an earlier test would be reused silently
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(tmp, ignore_errors=True)
