"""Suite-wide settings: deterministic and light on a 2-core machine."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

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
