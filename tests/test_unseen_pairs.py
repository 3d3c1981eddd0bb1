"""Two unseen-suite results on the same points are paired on ``unseen_union`` too."""

from __future__ import annotations

import pytest

from workers.contract.compare import compare_results
from workers.contract.samples import per_sample_block
from workers.contract.unseen import UNSEEN_UNION


def _unseen_metrics(flags: list[bool]) -> dict:
    return {"clean": 1.0, "n": len(flags), "suite": "unseen", "precision": "fp32", "epsilons": {},
            UNSEEN_UNION: sum(flags) / len(flags),
            "per_sample": per_sample_block("p", {"clean": [True] * len(flags), UNSEEN_UNION: flags})}


def test_unseen_union_gets_its_paired_test() -> None:
    a = [True] * 20 + [False] * 80
    b = [False] * 100
    report = compare_results([("A", _unseen_metrics(a)), ("B", _unseen_metrics(b))]).as_dict()
    pair = next(p for p in report["pairs"] if p["metric"] == UNSEEN_UNION)
    assert pair["only_a"] == 20 and pair["only_b"] == 0 and pair["difference"] == pytest.approx(0.2)
    assert pair["significant"] is True
    assert {p["metric"] for p in report["pairs"]} == {"clean", UNSEEN_UNION}  # no l_p union to pair
