"""scripts/gp_ablation.py: the recipes it trains, its convergence rule, and one smoke run end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from script_support import load_script


@pytest.fixture(scope="module")
def ablation() -> Any:
    return load_script("gp_ablation")


def test_convergence_needs_a_plateau_seen_for_two_epochs(ablation: Any) -> None:
    assert ablation.converged_epoch([0.1, 0.3, 0.5, 0.51, 0.52, 0.51], 2.0) == 3
    # still rising at the end: not converged, however flat the start
    assert ablation.converged_epoch([0.1, 0.1, 0.1, 0.2, 0.4], 2.0) is None
    # a plateau seen for one epoch only is not enough
    assert ablation.converged_epoch([0.1, 0.5, 0.5], 2.0) is None
    assert ablation.converged_epoch([], 2.0) is None


def test_recipes_differ_only_in_gp_and_start_and_keep_the_scratch_schedule(
    ablation: Any, tmp_path: Path
) -> None:
    args = ablation.parse_args(["--epochs", "4", "--train-n", "256", "--out", str(tmp_path)])
    specs = {name: ablation.recipe_spec(args, name, 0, str(tmp_path / "pre" / "checkpoint"))
             for name in ablation.RECIPES}
    assert {n: s["params"]["gp.enabled"] for n, s in specs.items()} == {
        "AT": False, "AT-GP": True, "AT-pre": False, "AT-GP-pre": True, "RAMP": True, "RAMP-noGP": False}
    assert [n for n, s in specs.items() if s["init_from"]] == ["AT-pre", "AT-GP-pre"]
    scratch = specs["AT"]
    for name in ("AT-pre", "AT-GP-pre"):  # init_from must not switch to the fine-tuning schedule
        pre = specs[name]
        keys = ("lr", "schedule", "epochs", "weight_decay", "eps_warmup")
        assert [pre[k] for k in keys] == [scratch[k] for k in keys]
    assert all(s["channels_last"] and s["monitor_n"] == args.monitor_n for s in specs.values())
    with pytest.raises(SystemExit):
        ablation.parse_args(["--recipes", "AT,nonsense"])


@pytest.mark.slow
def test_a_smoke_run_writes_the_section_with_curves_and_paired_tests(ablation: Any, tmp_path: Path) -> None:
    doc = tmp_path / "ablation.md"
    doc.write_text("# kept\n\nbefore\n")
    argv = ["--smoke", "--recipes", "AT,AT-GP-pre", "--out", str(tmp_path / "runs"), "--doc", str(doc)]
    ablation.main(argv)
    text = doc.read_text()
    assert text.startswith("# kept\n\nbefore\n") and text.count(ablation.START) == 1
    assert "| AT-GP-pre |" in text and "AT-GP-pre vs AT-GP" not in text  # AT-GP was not run
    assert (tmp_path / "ablation.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())["recipes"]
    by = {s["recipe"]: s for s in summary}
    assert len(by["AT"]["union_curve"]) == 2 and by["AT"]["cosine_curve"] == []
    assert len(by["AT-GP-pre"]["cosine_curve"]) == 2  # GP logs its gradient cosine each epoch
    wall = json.loads((tmp_path / "runs" / "summary.json").read_text())["settings"]["wall_s"]
    ablation.main(argv)
    assert doc.read_text().count(ablation.START) == 1  # re-rendered in place
    # from the cache: the wall time stays the training call's
    assert json.loads((tmp_path / "runs" / "summary.json").read_text())["settings"]["wall_s"] == wall


def test_the_paired_tests_are_holm_adjusted_and_say_inconclusive_without_discordant_points(
    ablation: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = {"seed0_union_interval": (0.05, 0.2), "final_clean": [0.9], "final_union": [0.1],
           "converged_epoch": None, "seconds_per_epoch": 1.0}
    summary = [row | {"recipe": name} for name in ("AT", "AT-GP", "AT-pre")]
    counts = {"AT-GP": (3, 14, 0.0127), "AT-pre": (0, 0, 1.0)}
    monkeypatch.setattr(ablation, "paired_union", lambda a, b: counts[a["recipe"]])
    settings = {"seeds": 1, "epochs": 2, "pre_epochs": 1, "monitor_n": 8, "eval_n": 8, "plateau": 2.0,
                "wall_s": 60.0}
    text = ablation.render(summary, settings, "plot.png")
    assert "- AT-GP vs AT: robust only under AT-GP 3, only under AT 14, p = 0.0127, Holm p = 0.0254 " \
           "(significant)" in text
    assert ("- AT-pre vs AT: robust only under AT-pre 0, only under AT 0, "
            "no discordant points: inconclusive") in text
