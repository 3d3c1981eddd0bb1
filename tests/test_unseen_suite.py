"""The ``unseen`` evaluation suite: per-attack accuracies, their mean, the unseen union and the
corruptions in ``metrics.json`` with Wilson intervals and per-sample flags; the contract's rows,
the CLI's table and ``rampctl eval --suite unseen`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from rampctl.main import app
from rampctl.tables import unseen_table
from workers.contract import catalog
from workers.contract.stats import wilson_interval
from workers.contract.unseen import UNSEEN_ATTACKS, UNSEEN_UNION, unseen_rows
from workers.evaluation import SUITES, EvalResult, evaluate
from workers.evaluation.unseen import UnseenOutcome, output_problem

runner = CliRunner()


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                         nn.Linear(54, 10))


@pytest.fixture(scope="module")
def points() -> tuple[torch.Tensor, torch.Tensor]:
    """Points labelled by the model itself (so most are clean-correct), four of them relabelled."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(24, 1, 28, 28, generator=g)
    with torch.no_grad():
        y = small_model()(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    return x, y


@pytest.fixture(scope="module")
def unseen_result(points, tmp_path_factory) -> tuple[EvalResult, object]:
    out = tmp_path_factory.mktemp("unseen")
    result = evaluate(small_model(), points, {}, "unseen", n=None, steps=2, batch_size=10, out_dir=out)
    return result, out


def test_the_suite_is_registered_and_described():
    assert "unseen" in SUITES.names() and "unseen" in catalog.SUITES
    assert "unseen" in catalog.UNSEEN_SUITES


def test_metrics_hold_each_attack_their_mean_the_union_and_the_corruptions(unseen_result):
    result, _ = unseen_result
    m = result.metrics()
    block = m["unseen"]
    assert list(block["accuracy"]) == list(UNSEEN_ATTACKS)
    assert block["family"] == "mnist" and block["steps"] == 2
    flags = result.unseen.flags
    for name in UNSEEN_ATTACKS:
        assert not np.any(flags[name] & ~result.clean)  # a point wrong clean is wrong under attack
        assert block["accuracy"][name] == pytest.approx(flags[name].mean())
        k = int(flags[name].sum())
        assert block["intervals"][name] == pytest.approx(list(wilson_interval(k, 24)))
    union = np.logical_and.reduce([flags[name] for name in UNSEEN_ATTACKS])
    assert m[UNSEEN_UNION] == block["union"] == pytest.approx(union.mean())
    assert block["union"] <= min(block["accuracy"].values())
    assert block["mean"] == pytest.approx(np.mean(list(block["accuracy"].values())))
    assert m["intervals"][UNSEEN_UNION] == pytest.approx(list(wilson_interval(int(union.sum()), 24)))
    # No l_p ball was attacked: no norm, no l_p union (the clean flags must not pose as one).
    assert m["linf"] is m["l2"] is m["l1"] is m["union"] is None and m["epsilons"] == {}
    assert "union" not in m["intervals"] and "checks" not in m
    assert 0 <= m["corruptions"]["mean"] <= 1


def test_flags_are_saved_and_read_back(unseen_result):
    result, out = unseen_result
    with np.load(out / "per_sample.npz") as archive:
        for name in UNSEEN_ATTACKS:
            assert np.array_equal(archive[f"unseen_{name}"], result.unseen.flags[name])
        assert np.array_equal(archive[UNSEEN_UNION], result.unseen.union)
        assert "union" not in archive.files
    loaded = EvalResult.load(out)
    assert loaded.metrics()["unseen"] == result.metrics()["unseen"]
    assert json.loads((out / "metrics.json").read_text())[UNSEEN_UNION] == result.metrics()[UNSEEN_UNION]


def test_the_same_seed_gives_the_same_flags(points):
    model = small_model()
    a = evaluate(model, points, {}, "unseen", n=12, steps=2, seed=5).unseen
    b = evaluate(model, points, {}, "unseen", n=12, steps=2, seed=5).unseen
    assert all(np.array_equal(a.flags[k], b.flags[k]) for k in UNSEEN_ATTACKS)


def test_the_union_of_the_outcome_is_the_and_of_its_flags():
    flags = {"fog": np.array([True, True, False]), "snow": np.array([True, False, False])}
    outcome = UnseenOutcome(flags, {"fog": 1.0, "snow": 1.0}, "mnist", 3)
    assert outcome.union.tolist() == [True, False, False]
    assert outcome.metrics()["mean"] == pytest.approx(0.5)


def test_invalid_attack_output_is_named():
    x = torch.rand(2, 1, 4, 4)
    assert output_problem(x, x) is None
    assert "outside [0, 1]" in output_problem(x, x + 2)
    assert "shape" in output_problem(x, x[:1])
    assert "non-finite" in output_problem(x, x * float("nan"))


def sample_metrics(**accuracy: float) -> dict:
    acc = {name: accuracy.get(name.replace("-", "_"), 0.5) for name in UNSEEN_ATTACKS}
    return {
        "clean": 0.9, "n": 100, "suite": "unseen", "corruptions": {"mean": 0.7},
        "unseen": {"accuracy": acc, "mean": sum(acc.values()) / len(acc), "union": 0.2,
                   "intervals": {**{k: [0.4, 0.6] for k in acc}, "union": [0.13, 0.29]},
                   "eps": dict.fromkeys(acc, 1.0), "family": "mnist", "steps": 200},
        UNSEEN_UNION: 0.2,
    }


def test_contract_rows_list_each_attack_then_the_summaries():
    rows = unseen_rows(sample_metrics(fog=0.25))
    assert [r.key for r in rows] == [*UNSEEN_ATTACKS, "unseen_mean", UNSEEN_UNION, "corruptions_mean"]
    fog = next(r for r in rows if r.key == "fog")
    assert fog.accuracy == 0.25 and fog.interval == (0.4, 0.6) and fog.eps == 1.0
    assert rows[-1].accuracy == 0.7 and rows[-2].interval == (0.13, 0.29)
    assert unseen_rows({"clean": 0.9}) == [] and unseen_rows(None) == []


def test_the_cli_table_shows_the_unseen_rows_per_run():
    table = unseen_table([{"name": "a", **sample_metrics(fog=0.25)}, {"name": "b", "clean": 0.5}])
    assert table is not None
    cells = [list(col.cells) for col in table.columns]
    assert [c.header for c in table.columns] == ["attack", "eps", "a"]
    assert cells[0][:6] == list(UNSEEN_ATTACKS) and cells[0][-2:] == ["unseen union", "corruptions mean"]
    assert cells[2][2] == "25.0% [40.0, 60.0]" and cells[2][-2] == "20.0% [13.0, 29.0]"
    assert unseen_table([{"clean": 0.5}]) is None


@pytest.mark.slow
def test_rampctl_eval_runs_the_unseen_suite(tmp_path):
    run = tmp_path / "nt"
    train = runner.invoke(app, ["train", "--method", "nt", "--dataset", "mnist-5k", "--model", "small-cnn",
                                "--epochs", "1", "--max-steps", "4", "--train-n", "64", "--batch-size", "16",
                                "--eval-n", "8", "--monitor-n", "8", "--checks-n", "0", "--out", str(run)])
    assert train.exit_code == 0, train.output
    out = tmp_path / "ev"
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--suite", "unseen", "--n", "3",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["suite"] == "unseen" and set(metrics["unseen"]["accuracy"]) == set(UNSEEN_ATTACKS)
    assert metrics["unseen"]["steps"] == 200 and UNSEEN_UNION in metrics
    assert "unseen adversaries" in result.output and "unseen union" in result.output
    bad = runner.invoke(app, ["eval", "--checkpoint", str(run), "--suite", "unsen", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown suite 'unsen'" in bad.output
