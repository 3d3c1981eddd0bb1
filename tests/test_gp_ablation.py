"""scripts/gp_ablation.py: the recipes it trains, its convergence rule, and one smoke run end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
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
    # the runs evaluate nothing at their end: the final evaluation is its own step (standard+, checks on)
    assert all(s["checks_n"] == 0 and s["eval_n"] == 0 for s in specs.values())
    assert (args.suite, args.checks_n) == ("standard+", 100)
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
    # the budget check: its own section and figure, the paired test against a run on the same points
    ablation.main(["--smoke", "--recipes", "AT", "--section", "budget", "--out", str(tmp_path / "budget"),
                   "--doc", str(doc), "--compare", f"AT={tmp_path / 'runs' / 'AT-s0'}"])
    text = doc.read_text()
    assert text.count(ablation.START) == 1 and text.count(ablation.markers("budget")[0]) == 1
    assert "- AT union:" in text and "- AT clean:" in text
    assert (tmp_path / "ablation-budget.png").stat().st_size > 1000


def test_the_paired_tests_are_holm_adjusted_and_say_inconclusive_without_discordant_points(
    ablation: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = {"seed0_union_interval": (0.05, 0.2), "final_clean": [0.9], "final_union": [0.1],
           "converged_epoch": None, "decay_gain": 0.03, "seconds_per_epoch": 1.0}
    summary = [row | {"recipe": name} for name in ("AT", "AT-GP", "AT-pre")]
    counts = {"AT-GP": (3, 14, 0.0127), "AT-pre": (0, 0, 1.0)}
    monkeypatch.setattr(ablation, "paired_union", lambda a, b: counts[a["recipe"]])
    settings = {"seeds": 1, "epochs": 2, "pre_epochs": 1, "monitor_n": 8, "eval_n": 8, "plateau": 2.0,
                "wall_s": 60.0, "section": "ablation", "full_lr_epochs": 1}
    text = ablation.render(summary, settings, "plot.png")
    assert "- AT-GP vs AT: robust only under AT-GP 3, only under AT 14, p = 0.0127, Holm p = 0.0254 " \
           "(significant)" in text
    assert ("- AT-pre vs AT: robust only under AT-pre 0, only under AT 0, p = 1, Holm p = 1 "
            "(inconclusive: 0 discordant points cannot reach p < 0.05)") in text


def test_convergence_is_read_before_the_learning_rate_drop(ablation: Any) -> None:
    curve = [0.1, 0.3, 0.5, 0.51, 0.52, 0.51, 0.57]  # flat, then the LR drop's rise in the last epoch
    assert ablation.converged_epoch(curve, 2.0) is None
    assert ablation.converged_epoch(curve, 2.0, window=6) == 3
    # a window too short to show two later epochs cannot call a plateau
    assert ablation.converged_epoch(curve, 2.0, window=3) is None


@pytest.mark.parametrize(("schedule", "epochs", "steps"), [
    ("piecewise", 15, 40), ("piecewise", 16, 40), ("piecewise", 30, 3), ("multistep", 3, 7),
    ("constant", 5, 2),
])
def test_the_full_lr_window_is_the_epochs_the_schedule_runs_at_its_base_lr(
    ablation: Any, schedule: str, epochs: int, steps: int
) -> None:
    from workers.training.schedules import lr_at

    total = epochs * steps
    at_base = [all(lr_at(schedule, 0.05, (k - 1) * steps + t, total) == 0.05 for t in range(steps))
               for k in range(1, epochs + 1)]
    window = ablation.full_lr_epochs(schedule, epochs)
    assert at_base == [k <= window for k in range(1, epochs + 1)]
    assert 0 < window <= epochs


def test_a_schedule_without_a_full_lr_phase_has_no_window(ablation: Any) -> None:
    with pytest.raises(ValueError, match="cyclic"):
        ablation.full_lr_epochs("cyclic", 10)


@pytest.mark.parametrize("bad", ["AT", "AT=", "MSD=runs/x", "RAMP=runs/x"])
def test_compare_needs_a_trained_recipe_and_a_run_dir(ablation: Any, bad: str) -> None:
    with pytest.raises(SystemExit):
        ablation.parse_args(["--recipes", "AT", "--compare", bad])
    with pytest.raises(SystemExit):  # named twice
        ablation.parse_args(["--recipes", "AT", "--compare", "AT=a", "--compare", "AT=b"])
    assert ablation.parse_args(["--recipes", "AT", "--compare", "AT=runs/a"]).compare == {"AT": "runs/a"}


def _fake_run(root: Path, name: str, spec: dict[str, Any], union: list[bool], clean: list[bool],
              points: str = "digest-a", suite: str = "standard+",
              evaluation: str = "final-standard+-n60-checks0") -> str:
    """A finished run as the scripts leave it: its spec, and its final evaluation in ``evaluation``
    (a subdirectory, as ``final_eval`` writes; "" for the run directory itself)."""
    from workers.evaluation import EvalResult

    out = root / name
    robust = {"linf": np.array(union), "l2": np.ones(len(union), bool), "l1": np.ones(len(union), bool)}
    EvalResult(clean=np.array(clean), robust=robust, epsilons={"linf": 0.3, "l2": 2.0, "l1": 10.0},
               suite=suite, points=points).save(out / evaluation)
    (out / "reproduce-spec.json").write_text(json.dumps(spec))
    return str(out)


BASE_SPEC = {"method": "at-linf", "dataset": "mnist-5k", "model": "small-cnn", "seed": 0, "eps_warmup": 0.3,
             "schedule": "piecewise", "lr": 0.05, "train_n": None, "init_from": None,
             "params": {"gp.enabled": False}}


def test_a_longer_budget_is_tested_against_the_shorter_on_the_same_points(
    ablation: Any, tmp_path: Path
) -> None:
    n = 60
    long_union = [True] * 20 + [False] * 40
    short_union = [True] * 5 + [False] * 55
    clean = [True] * n
    long_dir = _fake_run(tmp_path, "long", BASE_SPEC | {"epochs": 30}, long_union, clean)
    short_dir = _fake_run(tmp_path, "short", BASE_SPEC | {"epochs": 15}, short_union, clean)
    summary = [{"recipe": "AT", "seed0_dir": long_dir}]
    tests = ablation.budget_tests(summary, {"AT": short_dir})
    by = {t["metric"]: t for t in tests}
    assert (by["union"]["only"], by["union"]["only_other"]) == (15, 0)
    assert by["union"]["p_holm"] < 0.05 and (by["union"]["epochs"], by["union"]["other_epochs"]) == (30, 15)
    assert "significant" in ablation.budget_line(by["union"])
    none = "(inconclusive: 0 discordant points cannot reach p < 0.05)"
    assert ablation.budget_line(by["clean"]).endswith(none)
    few = by["union"] | {"only": 3, "only_other": 1, "p": 0.625, "p_holm": 1.0}
    assert ablation.budget_line(few).endswith("(inconclusive: 4 discordant points cannot reach p < 0.05)")
    some = few | {"only": 9, "only_other": 3, "p": 0.146, "p_holm": 0.29}
    assert ablation.budget_line(some).endswith("(not significant)")


@pytest.mark.parametrize(("change", "message"), [
    ({"points": "digest-b"}, "same points"),
    ({"method": "ramp"}, "method"),
    ({"params": {"gp.enabled": True}}, "gp.enabled"),
    ({"seed": 1}, "seed"),
    ({"suite": "standard"}, "other suites"),
])
def test_a_budget_test_refuses_another_recipe_or_other_points(
    ablation: Any, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    flags = [True, False] * 10
    long_dir = _fake_run(tmp_path, "long", BASE_SPEC | {"epochs": 30}, flags, flags)
    points, suite = change.get("points", "digest-a"), change.get("suite", "standard+")
    other_spec = BASE_SPEC | {"epochs": 15} | {k: v for k, v in change.items()
                                               if k not in ("points", "suite")}
    short_dir = _fake_run(tmp_path, "short", other_spec, flags, flags, points=points, suite=suite,
                          evaluation="")  # an evaluation in the run directory itself is found too
    with pytest.raises(ValueError, match=message):
        ablation.budget_tests([{"recipe": "AT", "seed0_dir": long_dir}], {"AT": short_dir})


def test_the_budget_section_is_written_beside_the_ablation_not_over_it(ablation: Any, tmp_path: Path) -> None:
    doc = tmp_path / "ablation.md"
    ablation.write_section(doc, f"{ablation.START}\nthe ablation\n{ablation.END}")
    start, end = ablation.markers("budget")
    ablation.write_section(doc, f"{start}\nbudget one\n{end}", "budget")
    ablation.write_section(doc, f"{start}\nbudget two\n{end}", "budget")
    text = doc.read_text()
    assert "the ablation" in text and "budget two" in text and "budget one" not in text


def test_a_run_without_its_evaluation_or_with_several_is_refused_by_name(
    ablation: Any, tmp_path: Path
) -> None:
    flags = [True, False] * 10
    long_dir = _fake_run(tmp_path, "long", BASE_SPEC | {"epochs": 30}, flags, flags)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "reproduce-spec.json").write_text(json.dumps(BASE_SPEC | {"epochs": 15}))
    with pytest.raises(ValueError, match="no final `standard\\+` evaluation"):
        ablation.budget_tests([{"recipe": "AT", "seed0_dir": long_dir}], {"AT": str(bare)})
    two = _fake_run(tmp_path, "two", BASE_SPEC | {"epochs": 15}, flags, flags)
    _fake_run(tmp_path, "two", BASE_SPEC | {"epochs": 15}, flags, flags,
              evaluation="final-standard+-n20-checks0")
    with pytest.raises(ValueError, match="2 final `standard\\+` evaluations .*name the one"):
        ablation.budget_tests([{"recipe": "AT", "seed0_dir": long_dir}], {"AT": two})
    # named, it is used (its run's spec read from the directory above)
    chosen = str(Path(two) / "final-standard+-n20-checks0")
    assert len(ablation.budget_tests([{"recipe": "AT", "seed0_dir": long_dir}], {"AT": chosen})) == 2
