"""RAMP's key trade-off pair from single-norm AT models: the choice rule. Torch-free.

The RAMP paper picks the pair (q, r) it pairs logits between as the two norms whose single-norm AT
models are least robust to each other, and leaves it to manual flags in its code. Given the
cross-norm matrix ``robust[a][b]`` -- the robust accuracy of the AT-``a`` model under the ``b``
attack (the default suite) -- the rule is:

1. the pair {a, b} with the lowest ``robust[a][b] + robust[b][a]`` (least robust to each other);
2. oriented so that q is the norm whose AT model is the less robust to the other one
   (``robust[q][r] <= robust[r][q]``): RAMP keeps q-robust points and pulls their r-logits
   towards the q-logits, the direction the q model lacks most.

Ties go to the canonical norm order (l_inf, l_2, l_1). The paper states the pairs it found for
its settings (``docs/methods.md#choosing-the-pair-automatically``; eps_inf = 2/255: l1 -> l2;
eps_inf = 4/255 and eps_1 = 18: l1 -> l_inf; eps_2 = 1.5: l2 -> l_inf; the defaults: l_inf -> l1)
but not the matrices, nor how it orients a pair; the orientation above is ours (it gives
l_inf -> l1 on the default radii, where the l_inf-AT model keeps 7.7 % l_1 robustness). The
tests check hand-made matrices shaped like each setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

from workers.contract.norms import NORMS, Norm

Matrix = Mapping[str, Mapping[str, float]]
"""robust[trained norm][attack norm], fractions in [0, 1]."""


def check_matrix(robust: Matrix) -> None:
    """ValueError unless every (AT model, attack) entry of the three norms is a fraction."""
    for a in NORMS:
        for b in NORMS:
            value = robust.get(a, {}).get(b)
            if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"pair selection needs robust[{a}][{b}] in [0, 1], got {value!r}")


def choose_pair(robust: Matrix) -> tuple[Norm, Norm]:
    """(q, r) by the rule above."""
    check_matrix(robust)

    def mutual(pair: tuple[Norm, Norm]) -> float:
        a, b = pair
        return float(robust[a][b]) + float(robust[b][a])

    a, b = min(combinations(NORMS, 2), key=mutual)  # min keeps the first of equal pairs
    return (a, b) if float(robust[a][b]) <= float(robust[b][a]) else (b, a)
