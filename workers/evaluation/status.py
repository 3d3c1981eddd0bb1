"""The verdict rules every evaluation check shares.

A check moves or flags points; it **fails** when it moves more than ``allowed(n)`` of its ``n``
points (1 %, at least one point: a single borderline point is the attacks' own noise), whatever
``n`` is -- evidence on few points is still evidence. It **passes** only when it had at least
``MIN_POINTS`` points to look at; with fewer and no failure it is **inconclusive**, never a pass.
"""

from __future__ import annotations

import math

from workers.contract.metrics import CHECK_FAILED as FAILED
from workers.contract.metrics import CHECK_INCONCLUSIVE as INCONCLUSIVE
from workers.contract.metrics import CHECK_PASSED as PASSED
from workers.contract.metrics import combined_status

MIN_POINTS = 50
TOLERANCE = 0.01

__all__ = ["FAILED", "INCONCLUSIVE", "MIN_POINTS", "PASSED", "TOLERANCE", "allowed", "combined_status",
           "verdict"]


def allowed(n: int) -> int:
    """Points a check may move before it fails."""
    return max(1, math.floor(TOLERANCE * n))


def verdict(moved: int, n: int) -> str:
    """failed / passed / inconclusive for a check that moved ``moved`` of ``n`` points."""
    if moved > allowed(n):
        return FAILED
    return PASSED if n >= MIN_POINTS else INCONCLUSIVE
