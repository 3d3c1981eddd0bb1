"""ramp.pair=auto: single-norm AT models (given or trained with the run's budget), the cross-norm
matrix, the chosen pair in metrics.json and in the RAMP run's spec; CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rampctl.main import app
from workers.contract.spec import TrainSpec
from workers.training import pair_selection
from workers.training.pair_selection import at_spec, prepare, record, select_pair

# Shaped like the paper's default radii: the l_inf model collapses under l_1.
MATRIX = {"linf": {"linf": 0.48, "l2": 0.60, "l1": 0.08}, "l2": {"linf": 0.29, "l2": 0.69, "l1": 0.35},
          "l1": {"linf": 0.22, "l2": 0.58, "l1": 0.55}}


def _spec(**params: Any) -> TrainSpec:
    return TrainSpec(method="ramp", epochs=2, max_steps=3, train_n=64, batch_size=32, seed=4,
                     params={"ramp.pair": "auto", "attack.steps_linf": 2} | params).resolve()


def _fake_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("{}")
    return folder


def test_auto_pair_spec_rules() -> None:
    spec = _spec()
    assert spec.pair_auto and "ramp.q" not in spec.params and "ramp.r" not in spec.params
    assert TrainSpec.model_validate(spec.model_dump()).pair_auto  # the stored form validates again
    with pytest.raises(ValueError, match="either the pair or 'auto'"):
        TrainSpec(method="ramp", params={"ramp.pair": "auto", "ramp.r": "l2"})
    with pytest.raises(ValueError, match="set that param"):
        TrainSpec(method="ramp", pair_models={"linf": "/x"})
    sub = at_spec(spec, "l1")
    assert (sub.method, sub.epochs, sub.max_steps, sub.seed, sub.train_n) == ("at-l1", 2, 3, 4, 64)
    assert sub.params["attack.steps_linf"] == 2 and sub.eval_n == 0  # the run's own budget


def test_select_pair_trains_what_is_missing_and_records_the_choice(tmp_path: Path) -> None:
    given = _fake_checkpoint(tmp_path / "given-l2")
    spec = _spec().model_copy(update={"pair_models": {"l2": str(given)}})
    trained: list[tuple[str, Path, bool]] = []

    def train(sub: TrainSpec, out: Path, resume: bool) -> dict[str, Any]:
        trained.append((sub.method, out, resume))
        (out / "checkpoint").mkdir(parents=True)
        (out / "metrics.json").write_text("{}")
        return {}

    def evaluate(ckpt: str, s: TrainSpec) -> dict[str, float]:
        norm = "l2" if ckpt == str(given) else Path(ckpt).parent.name.removeprefix("at-")
        return MATRIX[norm]

    chosen, report = prepare(spec, tmp_path / "run", train=train, evaluate=evaluate)
    assert [(m, o.name, r) for m, o, r in trained] == [("at-linf", "at-linf", False),
                                                       ("at-l1", "at-l1", False)]
    assert report is not None and (report["q"], report["r"]) == ("linf", "l1")
    assert report["matrix"] == MATRIX
    assert report["sources"] == {"linf": "trained", "l2": "given", "l1": "trained"}
    assert (chosen.params["ramp.q"], chosen.params["ramp.r"]) == ("linf", "l1")
    # Cached: a retried job reuses the selection instead of training again.
    assert select_pair(spec, tmp_path / "run", train=train, evaluate=evaluate) == report and len(trained) == 2
    metrics = record(tmp_path / "run", {"union": 0.4}, report)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == metrics and saved["pair_selection"]["q"] == "linf"


def test_a_fixed_pair_skips_the_selection(tmp_path: Path) -> None:
    spec = TrainSpec(method="ramp").resolve()
    assert prepare(spec, tmp_path, train=lambda *a: pytest.fail("no training")) == (spec, None)
    assert record(tmp_path, {"union": 0.1}, None) == {"union": 0.1}


@pytest.mark.slow
def test_cli_trains_the_at_models_then_ramp_with_the_chosen_pair(tmp_path: Path) -> None:
    out = tmp_path / "ramp-auto"
    args = ["train", "--method", "ramp", "--set", "ramp.pair=auto", "--set", "ramp.pair_n=12",
            "--max-steps", "2", "--train-n", "64", "--batch-size", "32", "--eval-n", "8", "--checks-n", "0",
            "--monitor-n", "0", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    report = metrics["pair_selection"]
    assert set(report["matrix"]) == {"linf", "l2", "l1"}
    assert all(len(row) == 3 for row in report["matrix"].values())
    assert report["q"] != report["r"] and report["n"] == 12
    for norm in ("linf", "l2", "l1"):
        assert (out / pair_selection.PAIR_DIR / f"at-{norm}" / "checkpoint" / "meta.json").is_file()
    params = json.loads((out / "checkpoint" / "meta.json").read_text())["spec"]["params"]
    assert (params["ramp.q"], params["ramp.r"]) == (report["q"], report["r"])
    assert "pair selection: (q, r)" in result.output
