"""The lecture's defences train through ``rampctl train`` and validate in sweep specs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rampctl.main import app
from workers.contract import catalog
from workers.contract.spec import TrainSpec
from workers.contract.sweep import parse_sweep_spec

runner = CliRunner()

# method -> (a param set on the command line, the loss parts its history reports, robust norms)
LECTURE = {
    "alp": ({"alp.lambda": "0.1", "attack.steps_linf": "1"}, {"ce", "alp"}, {"linf"}),
    "mart": ({"mart.beta": "3.0", "mart.norm": "l2", "attack.steps_l2": "1"}, {"ce", "mart"}, {"l2"}),
    "vat": ({"vat.lambda": "0.5", "vat.xi": "0.001"}, {"ce", "vat"}, set()),
    "fgsm-at": ({"fgsm.alpha": "0.3", "fgsm.norm": "max"}, {"ce"}, {"linf", "l2", "l1"}),
    "fast-at": ({"fast.step": "1.25", "fast.norm": "l1"}, {"ce"}, {"l1"}),
    "free-at": ({"free.replays": "2"}, {"ce"}, {"linf"}),
    "distill": ({"distill.temperature": "50.0"}, {"ce"}, set()),
}
SWEEPS = {
    "alp": {"params.alp.lambda": {"grid": [0.05, 0.5]}, "params.alp.norm": {"grid": ["linf", "max"]}},
    "mart": {"params.mart.beta": {"uniform": [1, 6]}},
    "vat": {"params.vat.power_iters": {"grid": [1, 2]}},
    "fgsm-at": {"params.fgsm.alpha": {"grid": [0.5, 1.0]}},
    "fast-at": {"params.fast.step": {"grid": [1.0, 1.25]}, "params.fast.norm": {"grid": ["sat"]}},
    "free-at": {"params.free.replays": {"grid": [4, 8]}},
    "distill": {"params.distill.temperature": {"grid": [50, 100]}},
}


def test_every_lecture_method_is_covered() -> None:
    lecture = set(catalog.METHODS) - {"nt", "at-linf", "at-l2", "at-l1", "sat", "avg", "max", "msd", "eat",
                                      "ramp", "trades"}
    assert lecture == set(LECTURE) == set(SWEEPS)


@pytest.mark.parametrize("method", sorted(LECTURE))
def test_trains_through_the_cli(method: str, tmp_path) -> None:
    params, parts, norms = LECTURE[method]
    sets = [arg for key, value in params.items() for arg in ("--set", f"{key}={value}")]
    out = tmp_path / method
    result = runner.invoke(app, [
        "train", "--method", method, "--dataset", "mnist-5k", "--model", "small-cnn", "--epochs", "1",
        "--max-steps", "2", "--train-n", "32", "--batch-size", "16", "--eval-n", "0", "--monitor-n", "0",
        "--checks-n", "0", "--seed", "1", "--out", str(out), *sets])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["method"] == method
    assert {k: str(v) for k, v in meta["spec"]["params"].items() if k in params} == params
    (history,) = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert set(history["losses"]) == parts and set(history["train_robust_acc"]) == norms
    assert history["step"] == 2


@pytest.mark.parametrize(("method", "args", "needle"), [
    ("alp", ["--set", "alp.norm=l3"], "alp.norm"),
    ("vat", ["--set", "attack.steps_linf=2"], "does not apply"),
    ("distill", ["--set", "distill.teacher_share=1.5"], "distill.teacher_share"),
])
def test_bad_params_are_clean_cli_errors(method: str, args: list[str], needle: str, tmp_path) -> None:
    result = runner.invoke(app, ["train", "--method", method, "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output


def test_distill_with_one_step_is_refused_before_training(tmp_path) -> None:
    result = runner.invoke(app, [
        "train", "--method", "distill", "--epochs", "1", "--max-steps", "1", "--train-n", "16",
        "--eval-n", "0", "--monitor-n", "0", "--checks-n", "0", "--out", str(tmp_path / "d")])
    assert result.exit_code != 0 and "at least 2 optimiser steps" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("method", sorted(SWEEPS))
def test_sweep_specs_over_the_methods_params_validate(method: str) -> None:
    base = {"kind": "train", "method": method, "dataset": "mnist-5k", "epochs": 2, "seed": 1}
    spec = parse_sweep_spec({"kind": "sweep", "base": base, "param_space": SWEEPS[method], "num_samples": 1,
                             "metric": "union", "mode": "max", "scheduler": None})
    trials = spec.trials()
    assert trials
    for trial in trials:
        resolved = TrainSpec(**trial.spec).resolve()
        assert resolved.method == method
        for key, value in trial.overrides.items():
            assert resolved.params[key.removeprefix("params.")] == value


def test_a_sweep_value_outside_a_params_choices_names_the_key() -> None:
    base = {"kind": "train", "method": "mart", "dataset": "mnist-5k", "epochs": 2, "seed": 1}
    with pytest.raises(ValueError, match="mart.norm"):
        space = {"params.mart.norm": {"grid": ["l5"]}}
        parse_sweep_spec({"kind": "sweep", "base": base, "param_space": space, "num_samples": 1,
                          "metric": "union", "mode": "max", "scheduler": None})
