"""Random-number isolation for evaluation.

pyautoattack reseeds torch's *global* generators on every attack call, and our own PGD draws its
random start from them too. Evaluation must neither depend on nor disturb the caller's random
stream (a training loop that evaluates every epoch would otherwise replay the same batches), so
every attack runs inside ``isolated_rng``.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Run the body with its own RNG streams; restore every global RNG state afterwards.

    Saves and restores torch CPU, every CUDA device's generator (when CUDA is initialised),
    numpy's legacy global generator and python's ``random``. With ``seed`` the body starts from
    that seed in all of them, so what it draws is reproducible.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    # fork_rng covers torch CPU and the listed CUDA devices. All devices when CUDA exists: pyautoattack
    # seeds CUDA even for a CPU model, and a lazily queued seed would land on the caller later.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            if seed is not None:
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextmanager
def preserved_trace() -> Iterator[None]:
    """Restore ``sys.settrace`` afterwards: pyautoattack's dynamic-defence check clears it,
    which would silently switch off coverage measurement or a debugger in the caller."""
    trace = sys.gettrace()
    try:
        yield
    finally:
        sys.settrace(trace)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from ``parts`` (python's ``hash`` is salted per process)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``parts`` via ``derive_seed``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(*parts))
    return gen
