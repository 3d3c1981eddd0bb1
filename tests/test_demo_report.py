"""The demo's closing report (scripts/demo_report.py): the per-epoch table and the Figure-1 verdict,
which must say "not shown" whenever the paired tests do not carry the claim."""

from __future__ import annotations

from typing import Any

import pytest
from script_support import load_script

from workers.contract.compare import compare_results
from workers.contract.samples import PER_SAMPLE_KEY, per_sample_block


@pytest.fixture(scope="module")
def report_module() -> Any:
    return load_script("demo_report")


def _metrics(linf: list[bool]) -> dict[str, Any]:
    """A result whose per-sample flags are ``linf`` (every other accuracy: the same flags)."""
    flags = {k: linf for k in ("clean", "linf", "l2", "l1", "union")}
    return {"suite": "standard", "precision": "fp32", "epsilons": {"linf": 0.3},
            PER_SAMPLE_KEY: per_sample_block("digest-of-the-same-points", flags)}


def _compare(base: int, l1: int, ramp: int, n: int = 100) -> dict[str, Any]:
    """A compare report of three jobs robust on the first ``base`` / ``l1`` / ``ramp`` of n points."""
    results = [(f"#{i} {name}", _metrics([p < k for p in range(n)]))
               for i, name, k in ((4, "eval", base), (3, "at-l1", l1), (1, "ramp", ramp))]
    return compare_results(results).as_dict()


NAMES = {"base": "#4", "l1": "#3", "ramp": "#1"}


def test_the_verdict_is_shown_only_when_both_paired_differences_are_significant(report_module) -> None:
    lines = report_module.figure1_verdict(_compare(base=40, l1=0, ramp=38), NAMES)
    assert lines[-1].startswith("Verdict: shown") and "stays level with the starting model" in lines[-1]
    assert "start 40.0 % vs AT-l_1 0.0 %" in lines[1] and "p < 0.0001" in lines[1] and "Holm" in lines[1]
    assert "RAMP 38.0 % vs AT-l_1 0.0 %" in lines[2] and "(38 vs 0 points only one got right" in lines[2]
    # The order the report lists a pair in does not flip the sign.
    assert "RAMP 38.0 % vs start 40.0 %" in lines[3]


def test_the_verdict_is_not_shown_when_the_tests_do_not_carry_it(report_module) -> None:
    # RAMP lost it as well: the l_1 loss is shown, RAMP's advantage is not.
    lines = report_module.figure1_verdict(_compare(base=40, l1=0, ramp=1), NAMES)
    assert lines[-1].startswith("Verdict: not shown") and "RAMP did not keep" in lines[-1]
    assert "l_1-only fine-tuning did not lose" not in lines[-1]
    # A small loss on few points: a direction, not a finding.
    lines = report_module.figure1_verdict(_compare(base=6, l1=3, ramp=6, n=20), NAMES)
    assert lines[-1].startswith("Verdict: not shown")
    assert "did not lose l_inf robustness significantly" in lines[-1]
    # No pairing possible (a job is missing from the report): inconclusive, not a verdict.
    lines = report_module.figure1_verdict({"pairs": [], "notes": ["#4 eval: no per-sample flags"]}, NAMES)
    assert lines == ["Figure-1 verdict: inconclusive -- the jobs could not be paired (see the notes above)"]


def test_the_epoch_table_lists_each_run_and_keeps_a_retried_epochs_last_report(report_module) -> None:
    histories = {
        "AT-l_1": [{"epoch": 1, "monitor": {"linf": 0.5, "l1": 0.4, "union": 0.3}},
                   {"epoch": 1, "monitor": {"linf": 0.0, "l1": 0.6, "union": 0.0}}],
        "RAMP": [{"epoch": 1, "monitor": {"linf": 0.45, "l1": 0.35, "union": 0.3}},
                 {"epoch": 2, "monitor": {"linf": 0.5, "l1": 0.4, "union": 0.325}}],
    }
    lines = report_module.epoch_table(histories)
    assert "AT-l_1" in lines[0] and "RAMP" in lines[0] and "l_inf / l_1 / union" in lines[1]
    rows = [line.split("|") for line in lines[3:]]
    assert [r[0].strip() for r in rows] == ["1", "2"]
    assert rows[0][1].split() == ["0.0", "/", "60.0", "/", "0.0"]
    assert rows[1][1].split() == ["-", "/", "-", "/", "-"]
    assert rows[1][2].split() == ["50.0", "/", "40.0", "/", "32.5"]
