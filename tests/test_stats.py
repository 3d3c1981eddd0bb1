"""Intervals, exact paired tests and the per-sample flags they read (``workers.contract.stats``,
``samples``, ``compare``): checked against scipy and by properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from workers.contract.compare import compare_results
from workers.contract.display import pair_verdict
from workers.contract.metrics import intervals
from workers.contract.samples import decode_flags, encode_flags, per_sample_block, read_per_sample
from workers.contract.stats import decidable, discordant, holm, mcnemar_exact, verdict, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (62, 100), (500, 1000), (1, 10_000)])
def test_wilson_matches_scipy(k, n) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


@given(st.integers(0, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_estimate_and_stays_in_the_unit_interval(kn) -> None:
    k, n = kn
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo <= k / n <= hi
        assert (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n)


def test_a_hundred_points_are_about_ten_points_wide() -> None:
    lo, hi = wilson_interval(50, 100)
    assert 0.19 < hi - lo < 0.2  # the "standard error of ~5 points" of a 100-point table
    lo, hi = wilson_interval(500, 1000)
    assert 0.06 < hi - lo < 0.065


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (10, 2), (3, 3), (0, 7), (100, 130), (400, 520)])
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_points(b, c) -> None:
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_mcnemar_rejects_negative_counts_and_wilson_impossible_ones() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_holm_matches_the_step_down_rule() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([]) == []


@settings(max_examples=200)
@given(st.lists(st.booleans(), max_size=300))
def test_flags_survive_packing(flags) -> None:
    assert decode_flags(encode_flags(flags), len(flags)) == flags


def test_packing_is_numpys_little_endian_bit_order() -> None:
    import base64

    import numpy as np

    flags = np.array([1, 0, 1, 1, 0, 0, 0, 0, 1, 1], dtype=bool)
    packed = base64.b64encode(np.packbits(flags, bitorder="little").tobytes()).decode()
    assert encode_flags(flags.tolist()) == packed


def test_broken_flags_are_refused() -> None:
    with pytest.raises(ValueError, match="hold 2 bytes"):
        decode_flags(encode_flags([True] * 10), 30)
    with pytest.raises(ValueError, match="base64"):
        decode_flags("not base64!", 3)
    assert read_per_sample({"per_sample": {"encoding": "bits-le-base64", "n": 30, "points": "x",
                                           "flags": {"clean": encode_flags([True] * 10)}}}) is None
    assert read_per_sample({"clean": 0.5}) is None


def _metrics(points: str, union: list[bool], **extra) -> dict:
    flags = {"clean": [True] * len(union), "union": union}
    return {"union": sum(union) / len(union), "clean": 1.0, "n": len(union), "suite": "standard",
            "precision": "fp32", "epsilons": {"linf": 0.3},
            "per_sample": per_sample_block(points, flags)} | extra


def test_paired_difference_on_the_same_points() -> None:
    a = [True] * 30 + [False] * 70
    b = [False] * 30 + [False] * 70
    report = compare_results([("A", _metrics("p", a)), ("B", _metrics("p", b))]).as_dict()
    union = next(p for p in report["pairs"] if p["metric"] == "union")
    assert union["only_a"] == 30 and union["only_b"] == 0 and union["difference"] == pytest.approx(0.3)
    assert union["p"] == pytest.approx(2 * 0.5**30) and union["significant"] is True
    clean = next(p for p in report["pairs"] if p["metric"] == "clean")
    assert clean["p"] == 1.0 and clean["significant"] is False
    assert report["comparisons"] == 2 and report["notes"] == []
    assert union["p_holm"] == pytest.approx(min(1.0, 2 * union["p"]))


def test_a_small_difference_is_not_significant() -> None:
    a = [True] * 52 + [False] * 48
    b = [True] * 50 + [False] * 50
    union = next(p for p in compare_results([("A", _metrics("p", a)), ("B", _metrics("p", b))]).pairs
                 if p.metric == "union")
    assert union.only_a == 2 and union.only_b == 0 and not union.significant and union.p == 0.5
    # two discordant points could never have been significant: inconclusive, not "no difference"
    assert not union.decidable and union.as_dict()["decidable"] is False
    assert pair_verdict(union.as_dict()) == "inconclusive: 2 discordant points cannot reach p < 0.05"


@pytest.mark.parametrize(("b", "c", "expected"), [(0, 0, False), (5, 0, False), (6, 0, True), (3, 3, True),
                                                   (0, 6, True), (2, 2, False), (40, 40, True)])
def test_a_test_is_decidable_only_with_six_discordant_points(b: int, c: int, expected: bool) -> None:
    assert decidable(b, c) is expected
    # the definition: the most lopsided split of b + c points could reach p < 0.05
    assert (mcnemar_exact(b + c, 0) < 0.05) is expected


def test_the_pair_verdict_has_three_words() -> None:
    base = {"only_a": 9, "only_b": 3, "p": 0.15, "significant": False, "decidable": True}
    assert pair_verdict(base) == "not significant"
    assert pair_verdict(base | {"p": 0.01, "significant": True}) == "significant"
    assert pair_verdict(base | {"only_a": 3, "only_b": 1, "decidable": False}).startswith("inconclusive: 4 ")
    old = {k: v for k, v in base.items() if k != "decidable"}  # a report from before the field
    assert pair_verdict(old) == "not significant"


def test_every_report_words_a_test_by_its_counts() -> None:
    # the one verdict all reports use: an exact test on fewer than 6 discordant points is inconclusive
    # whatever its split, never "not significant"; from 6 on, its p decides
    for b in range(12):
        for c in range(12):
            word = verdict(mcnemar_exact(b, c), b, c)
            if b + c < 6:
                assert word == f"inconclusive: {b + c} discordant points cannot reach p < 0.05"
            else:
                assert word == ("significant" if mcnemar_exact(b, c) < 0.05 else "not significant")
    assert verdict(0.2, 6, 0) == "not significant"  # a Holm-adjusted p judges, not the raw counts
    # a report stored before the decidable field is worded from its counts the same way
    stored = {"only_a": 4, "only_b": 0, "p": 0.125, "significant": False}
    assert pair_verdict(stored).startswith("inconclusive")


def test_unpaired_results_are_named_not_compared() -> None:
    a, b = [True] * 10, [False] * 10
    report = compare_results([("A", _metrics("p", a)), ("B", _metrics("q", b)), ("C", {"union": 0.5})])
    assert report.pairs == []
    assert "C: no per-sample flags, so no paired test" in report.notes
    assert "A and B were evaluated on different points: no paired test" in report.notes


def test_mixed_schemes_and_suites_are_said() -> None:
    a, b = [True] * 10, [False] * 10
    legacy = _metrics("p", b, precision="bf16", suite="monitor")
    report = compare_results([("A", _metrics("p", a)), ("B", legacy)])
    assert any("different precision schemes (fp32 vs bf16)" in note for note in report.notes)
    assert any("different suites (standard vs monitor)" in note for note in report.notes)


def test_intervals_are_read_or_derived() -> None:
    recorded = intervals({"union": 0.5, "n": 10, "intervals": {"union": [0.1, 0.9]}})
    assert recorded == {"union": (0.1, 0.9)}
    derived = intervals({"clean": 0.62, "linf": None, "n": 100})
    assert set(derived) == {"clean"} and derived["clean"] == wilson_interval(62, 100)
    assert intervals({"clean": 0.5}) == {} and intervals(None) == {}


def test_discordant_counts() -> None:
    assert discordant([True, True, False, False], [True, False, True, False]) == (1, 1)
    with pytest.raises(ValueError):
        discordant([True], [True, False])
    assert math.isclose(mcnemar_exact(*discordant([True] * 5, [False] * 5)), 0.0625)
