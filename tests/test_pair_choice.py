"""RAMP's key trade-off pair chosen from a cross-norm robustness matrix (``workers.training.pair_choice``)."""

from __future__ import annotations

import pytest

from workers.training.pair_choice import choose_pair


def matrix(rows: dict[str, tuple[float, float, float]]) -> dict[str, dict[str, float]]:
    """rows[trained norm] = robust accuracy under (l_inf, l_2, l_1) attacks, in %."""
    return {a: dict(zip(("linf", "l2", "l1"), (v / 100 for v in values), strict=True))
            for a, values in rows.items()}


# Hand-made matrices shaped like the paper's CIFAR-10 settings (AT model rows, attack columns).
PAPER_CASES = [
    # (8/255, 0.5, 12): the l_inf model collapses under l_1 (7.7 % at the fine-tuning start).
    ("default radii", matrix({"linf": (48, 60, 8), "l2": (29, 69, 35), "l1": (22, 58, 55)}), ("linf", "l1")),
    # eps_inf = 2/255: l_inf is the mild threat; l_1 and l_2 models are weakest against each other.
    ("eps_inf 2/255", matrix({"linf": (68, 63, 30), "l2": (66, 69, 36), "l1": (60, 26, 55)}), ("l1", "l2")),
    # eps_inf = 4/255: the l_1 model is weakest against l_inf.
    ("eps_inf 4/255", matrix({"linf": (58, 62, 20), "l2": (50, 69, 35), "l1": (12, 55, 55)}), ("l1", "linf")),
    # eps_1 = 18: a larger l_1 radius; the l_1 model gives up l_inf almost entirely.
    ("eps_1 18", matrix({"linf": (48, 60, 3), "l2": (29, 69, 20), "l1": (1, 45, 43)}), ("l1", "linf")),
    # eps_2 = 1.5: the l_2 model gives up l_inf.
    ("eps_2 1.5", matrix({"linf": (48, 22, 8), "l2": (4, 38, 40), "l1": (22, 30, 55)}), ("l2", "linf")),
]


@pytest.mark.parametrize(("name", "robust", "pair"), PAPER_CASES, ids=[c[0] for c in PAPER_CASES])
def test_the_papers_settings(name, robust, pair) -> None:
    assert choose_pair(robust) == pair


def test_least_robust_to_each_other_wins_over_one_low_entry() -> None:
    # One very low entry (l2 model under l_1: 5 %) loses to a pair that is low both ways.
    robust = matrix({"linf": (50, 60, 15), "l2": (50, 70, 5), "l1": (12, 60, 55)})
    assert choose_pair(robust) == ("l1", "linf")  # 15 + 12 = 27 < 5 + 60 = 65


def test_ties_and_bad_matrices() -> None:
    flat = matrix({n: (10, 10, 10) for n in ("linf", "l2", "l1")})
    assert choose_pair(flat) == ("linf", "l2")  # canonical order
    with pytest.raises(ValueError, match=r"robust\[l1\]\[l2\]"):
        choose_pair({"linf": {"linf": 0.5, "l2": 0.5, "l1": 0.5}, "l2": {"linf": 0.5, "l2": 0.5, "l1": 0.5},
                     "l1": {"linf": 0.5, "l1": 0.5}})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        choose_pair(matrix({"linf": (150, 10, 10), "l2": (10, 10, 10), "l1": (10, 10, 10)}))
