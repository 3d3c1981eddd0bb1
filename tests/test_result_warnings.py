"""A result's warnings when its suite is weaker than its data needs (``DatasetInfo.result_suite``):
on MNIST-like data `standard` and full AutoAttack over-state l_2 / l_1 (docs/evaluation.md)."""

from __future__ import annotations

import pytest

from workers.contract.catalog import DATASETS, SUITE_STRENGTH, SUITES
from workers.contract.results import dataset_of, result_warnings, weak_suite_warning


def _metrics(suite: object, **extra: object) -> dict[str, object]:
    return {"suite": suite, "n": 100, "clean": 0.9, "linf": 0.8, "l2": 0.6, "l1": 0.2, "union": 0.2,
            "upper_bound": suite == "monitor", "checks": {"status": "passed", "warnings": []}} | extra


@pytest.mark.parametrize("suite", ["standard", "standard+", "autoattack"])
def test_a_suite_weaker_than_mnist_needs_is_flagged(suite: str) -> None:
    warnings = result_warnings(_metrics(suite, data="mnist-5k:test"))
    assert len(warnings) == 1 and warnings[0].startswith(f"on mnist-5k the {suite!r} suite over-states")
    assert "upper bounds here" in warnings[0] and "--suite strict" in warnings[0]


def test_the_strict_suite_and_other_data_are_not_flagged() -> None:
    assert result_warnings(_metrics("strict", data="mnist-5k:test")) == []
    assert result_warnings(_metrics("standard", data="cifar10:test")) == []  # standard is its result suite
    assert result_warnings(_metrics("standard", data="/data/points.npz")) == []  # unknown points: no claim
    assert result_warnings(_metrics("unseen", data="mnist-5k:test")) == []  # not an l_p suite
    assert result_warnings(_metrics(["apgd", "pgd"], data="mnist-5k:test")) == []  # an attack list: no claim
    # the monitor suite already carries its own upper-bound warning, not a second one
    monitor = result_warnings(_metrics("monitor", data="mnist-5k:test"))
    assert len(monitor) == 1 and "optimistic upper bound" in monitor[0]
    assert monitor[0].endswith("evaluate with --suite strict for numbers to report")  # what mnist needs
    cifar = result_warnings(_metrics("monitor", data="cifar10:test"))
    assert cifar[0].endswith("--suite standard for numbers to report")


def test_the_dataset_field_wins_over_the_data_label() -> None:
    # points from a file of an MNIST model: the model's dataset decides
    from_file = _metrics("standard", data="/data/points.npz", dataset="fashion-mnist")
    assert dataset_of(from_file) == "fashion-mnist"
    assert weak_suite_warning(_metrics("standard", data="/data/p.npz", dataset="fashion-mnist")) is not None
    # hostile or unknown names are not looked up
    assert dataset_of(_metrics("standard", data="../../etc:test")) is None
    assert dataset_of(_metrics("standard", dataset=["mnist-5k"], data=3)) is None


def test_every_dataset_names_an_l_p_suite_and_every_l_p_suite_has_a_strength() -> None:
    assert {info.result_suite for info in DATASETS.values()} <= set(SUITE_STRENGTH)
    assert set(SUITE_STRENGTH) == set(SUITES) - {"unseen"}
    assert DATASETS["mnist-5k"].result_suite == "strict" and DATASETS["cifar10"].result_suite == "standard"


def test_the_cli_gives_a_warning_every_run_shares_once() -> None:
    from rampctl.tables import grouped_check_lines

    mnist = [_metrics("standard", data="mnist-5k:test", name=f"#{i}") for i in (1, 2)]
    cifar = _metrics("standard", data="cifar10:test", name="#3")
    queued = {"name": "#4 (queued)"}  # no result: neither blocks nor joins the shared lines
    lines = grouped_check_lines([*mnist, queued])
    warned = [(who, line) for who, line in lines if "over-states" in line]
    assert [who for who, _ in warned] == ["all 2 runs"]
    assert ("all 2 runs", "checks passed (rigour checks on 0 points; 50 needed to decide)") in lines
    # one run differs: the warning goes to each run that has it, by name
    mixed = [who for who, line in grouped_check_lines([*mnist, cifar]) if "over-states" in line]
    assert mixed == ["#1", "#2"]
    assert grouped_check_lines([queued]) == grouped_check_lines([]) == []  # nothing evaluated: no line
    single = grouped_check_lines(mnist[:1])
    assert {who for who, _ in single} == {"#1"} and any("over-states" in line for _, line in single)
