"""How sure a robust accuracy is: intervals for one number, exact paired tests for two. Torch-free
and numpy-free (the service, the CLI and the evaluation share it).

- ``wilson_interval(k, n)``: the 95 % Wilson score interval for k successes in n trials (Wilson
  1927). It keeps its coverage near the nominal level at the extremes (0 or n robust points) where
  the normal approximation collapses to a zero-width interval, and stays inside [0, 1].
- ``mcnemar_exact(b, c)``: McNemar's exact test for two classifiers scored on the same points:
  ``b`` points only A got right, ``c`` points only B got right. Under "no difference" every
  discordant point is a fair coin, so p is the two-sided binomial tail of min(b, c) in
  Bin(b + c, 1/2) (doubled, capped at 1). Points both got right or both got wrong say nothing
  about the difference and do not enter.
- ``holm``: Holm's step-down adjustment of a family of p values (several pairs at once).

Computed with integers and exact binomial coefficients (``math.comb``), so p stays exact for the
10,000-point evaluations of the literature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

SIGNIFICANCE = 0.05
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (default 95 %); (0, 1) for n = 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # The exact ends: rounding must not put 0/n above 0 or n/n below 1.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p value for ``b`` and ``c`` discordant points (1.0 when b + c = 0)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**m)))


def decidable(b: int, c: int, alpha: float = SIGNIFICANCE) -> bool:
    """Whether ``b + c`` discordant points could give p < ``alpha`` at all (the most lopsided split,
    all on one side, gives the smallest p: 2 * 0.5 ** (b + c), so fewer than 6 never can at 0.05).
    A test that could not have rejected is inconclusive, never evidence of "no difference"."""
    return mcnemar_exact(b + c, 0) < alpha


def verdict(p: float, only_a: int, only_b: int, alpha: float = SIGNIFICANCE) -> str:
    """The one word every report gives a paired test (``p``: the p value it is judged by, Holm-adjusted
    where it is one of a family): significant, not significant, or inconclusive -- with the reason --
    when its discordant points could not have reached ``alpha`` whatever their split."""
    if p < alpha:
        return "significant"
    if decidable(only_a, only_b, alpha):
        return "not significant"
    return f"inconclusive: {only_a + only_b} discordant points cannot reach p < {alpha:g}"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p values (same order as given): control the family-wise error of several tests."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        out[i] = running
    return out


def discordant(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int]:
    """(points only ``a`` has, points only ``b`` has) of two flag sequences over the same points."""
    if len(a) != len(b):
        raise ValueError(f"paired flags must cover the same points, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return only_a, only_b
