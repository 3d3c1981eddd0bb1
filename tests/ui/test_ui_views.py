"""The pages' rules, on rows built in memory: which number a heat-map cell shows (and whether it is an
upper bound), the best trial, curves of jobs evaluated at different radii, progress and duration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from service.db.models import Job, Trial
from service.ui import views
from workers.contract import display

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def trial(index: int, config: dict[str, Any], *, final: dict[str, Any] | None = None,
          metrics: list[dict[str, Any]] | None = None, status: str = "succeeded") -> Trial:
    tid = f"trial_{index:04d}"
    return Trial(job_id=1, trial_id=tid, trial_index=index, attempt=1, status=status, config=config,
                 final=final, metrics=metrics or [], checkpoint=f"trials/{tid}/checkpoint")


def job(**fields: Any) -> Job:
    values: dict[str, Any] = {"id": 1, "kind": "train", "method": "ramp", "status": "running", "attempt": 1,
                              "spec": {"dataset": "mnist-5k", "model": "small-cnn"}, "created_at": T0}
    return Job(**(values | fields))


def monitor(union: float) -> dict[str, Any]:
    return {"clean": 0.9, "union": union, "suite": "monitor", "upper_bound": True}


SPEC = {"param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}, "epsilons.l1": {"grid": [8, 12]}},
        "metric": "union", "mode": "max"}


def test_heat_map_cells_compare_monitor_numbers_even_for_the_re_evaluated_best_trial() -> None:
    # The best trial was re-evaluated with the default suite (lower union); its own monitor number,
    # kept under final.monitor, is the one comparable with the other cells.
    best_final = {"clean": 0.85, "union": 0.12, "suite": "standard", "upper_bound": False,
                  "monitor": monitor(0.4)}
    trials = [
        trial(0, {"params.ramp.lambda": 0.5, "epsilons.l1": 8}, final=monitor(0.2)),
        trial(1, {"params.ramp.lambda": 0.5, "epsilons.l1": 12}, final=best_final),
        trial(2, {"params.ramp.lambda": 5, "epsilons.l1": 8}, metrics=[{"epoch": 1, "union": 0.3}],
              status="running"),
        trial(3, {"params.ramp.lambda": 5.0, "epsilons.l1": 12.0}, status="pending"),
    ]
    listed = [{"final": t.final, "metrics": t.metrics or []} for t in trials]
    assert display.monitor_union(listed[1]) == 0.4
    assert display.monitor_union(listed[2]) == 0.3  # the last epoch's held-out (monitor) check
    assert display.monitor_union(listed[3]) is None
    heat = views.union_heatmap(SPEC, trials, "trial_0001")
    cells = {(c["y"], c["x"]): c for c in heat["cells"]}
    assert {k: c["v"] for k, c in cells.items()} == {("0.5", "8"): 0.2, ("0.5", "12"): 0.4,
                                                      ("5", "8"): 0.3, ("5", "12"): None}
    assert cells[("5", "12")]["trials"] == ["trial_0003"]  # 5.0 and 5 are one grid value
    assert [k for k, c in cells.items() if c["best"]] == [("0.5", "12")]
    assert heat["label"] == display.GRID_LABEL == "union accuracy, monitor suite (an upper bound)"


def test_a_default_suite_number_never_enters_the_grid_and_repeated_samples_average() -> None:
    standard = {"suite": "standard", "upper_bound": False}
    points = [(0.5, 8, 0.1, 0.3), (0.5, 8, 0.3, 0.5), (5, 12, 0.2, 0.4)]
    trials = [trial(i, {"params.ramp.lambda": lam, "epsilons.l1": eps}, final=standard | {"union": u},
                    metrics=[{"epoch": 1, "union": m}])
              for i, (lam, eps, u, m) in enumerate(points)]
    trials.append(trial(3, {"params.ramp.lambda": 5, "epsilons.l1": 8}, final=standard | {"union": 0.9}))
    heat = views.union_heatmap(SPEC, trials, None)
    cells = {(c["y"], c["x"]): c["v"] for c in heat["cells"]}
    # the held-out (monitor) checks, averaged; trial 3 has no monitor number: its cell stays empty
    assert cells == {("0.5", "8"): 0.4, ("0.5", "12"): None, ("5", "8"): None, ("5", "12"): 0.4}
    assert not any(c["best"] for c in heat["cells"])
    assert views.union_heatmap({"param_space": {"lr": {"uniform": [0.01, 0.1]}}}, trials, None) is None


def test_the_cli_grid_and_the_page_heat_map_show_the_same_cells() -> None:
    """One display rule: for the same trials, ``rampctl trials`` prints what the page draws."""
    from rampctl import tables

    best_final = {"union": 0.12, "suite": "standard", "upper_bound": False, "monitor": monitor(0.4)}
    trials = [
        trial(0, {"params.ramp.lambda": 0.5, "epsilons.l1": 8}, final=monitor(0.2)),
        trial(1, {"params.ramp.lambda": 0.5, "epsilons.l1": 12}, final=best_final),
        trial(2, {"params.ramp.lambda": 5, "epsilons.l1": 8}, metrics=[{"epoch": 1, "union": 0.3}]),
        trial(3, {"params.ramp.lambda": 5.0, "epsilons.l1": 12.0}, status="pending"),
    ]
    heat = views.union_heatmap(SPEC, trials, "trial_0001")
    listing = {"trials": [{"trial_id": t.trial_id, "config": t.config, "final": t.final,
                           "metrics": t.metrics or []} for t in trials], "best_trial_id": "trial_0001"}
    table = tables.union_grid(listing, SPEC)
    columns = [list(col.cells) for col in table.columns]
    printed = {(row, col): columns[j + 1][i] for i, row in enumerate(columns[0])
               for j, col in enumerate(heat["x"])}
    drawn = {(c["y"], c["x"]): display.pct(c["v"]) + (" *" if c["best"] else "") for c in heat["cells"]}
    assert printed == drawn == {("0.5", "8"): "20.0%", ("0.5", "12"): "40.0% *", ("5", "8"): "30.0%",
                                ("5", "12"): "-"}
    assert heat["label"] in str(table.title)
    assert [col.header for col in table.columns[1:]] == heat["x"] and columns[0] == heat["y"]


def test_the_best_trial_follows_the_sweeps_rule_last_epoch_and_ties_to_the_earliest() -> None:
    spec = SPEC | {"metric": "loss_ce", "mode": "min"}
    trials = [trial(0, {}, metrics=[{"epoch": 1, "loss_ce": 0.5}, {"epoch": 2, "loss_ce": 0.3}]),
              trial(1, {}, metrics=[{"epoch": 1, "loss_ce": 0.1}, {"epoch": 2, "loss_ce": 0.4}]),
              trial(2, {}, metrics=[{"epoch": 1, "loss_ce": 0.3}])]
    view = views.sweep_view(job(kind="sweep", spec=spec), trials)
    assert view["best_id"] == "trial_0000" and view["best_score"] == 0.3
    assert [r["best"] for r in view["rows"]] == [True, False, False]
    assert view["rows"][0]["checkpoint_file"] == "trials/trial_0000/checkpoint/model.safetensors"
    assert view["columns"] == ["ramp.lambda", "eps_l1"] and view["counts"] == "3 succeeded"


def test_compare_aligns_curves_of_jobs_evaluated_at_different_radii() -> None:
    def result(eps: float, accs: list[float]) -> dict[str, Any]:
        radii = [0.0, eps / 2, eps, 2 * eps, 1.0]
        curves = {"linf": {"radius": radii, "accuracy": accs}}
        return {"clean": accs[0], "union": 0.1, "checks": {"curves": curves}}

    a = job(id=1, result=result(0.3, [0.9, 0.6, 0.4, 0.1, 0.0]))
    b = job(id=2, method="eat", result=result(0.1, [0.8, 0.7, 0.6, 0.5, 0.0]))
    view = views.compare_view([a, b], {1: [{"epoch": 1, "monitor": {"union": 0.2}}]})
    (curve,) = view["curves"]
    assert curve["labels"] == ["0", "0.05", "0.1", "0.15", "0.2", "0.3", "0.6", "1"]
    assert curve["datasets"] == [
        {"label": "#1 ramp", "data": [0.9, None, None, 0.6, None, 0.4, 0.1, 0.0]},
        {"label": "#2 eat", "data": [0.8, 0.7, 0.6, None, 0.5, None, None, 0.0]},
    ]
    assert view["epochs"] == [{"label": "#1 ramp", "epochs": [1], "union": [0.2]}]
    assert [r["accuracy"]["clean"] for r in view["rows"]] == [0.9, 0.8]


def test_progress_duration_and_buttons_follow_the_job() -> None:
    running = job(progress={"step": 3, "total_steps": 12, "phase": "train"}, dispatching_at=T0,
                  running_at=T0 + timedelta(seconds=5))
    assert views.progress(running) == {"fraction": 0.25, "label": "train 3/12"}
    assert views.duration_s(running, T0 + timedelta(seconds=65)) == 60.0
    assert views.actions(running) == {"cancel": True, "retry": False, "finetune": False, "evaluate": False}
    done = job(status="succeeded", running_at=T0, succeeded_at=T0 + timedelta(minutes=2), progress=None)
    assert views.progress(done) == {"fraction": 1.0, "label": "done"}
    assert views.job_row(done, T0 + timedelta(hours=5))["duration"] == "2m 00s"
    assert views.actions(done)["finetune"] and not views.actions(done)["cancel"]
    failed = job(status="failed", kind="eval", failed_at=T0)
    assert views.actions(failed) == {"cancel": False, "retry": True, "finetune": False, "evaluate": False}
    assert views.progress(job(status="queued")) == {"fraction": None, "label": "-"}
    sweep = job(kind="sweep", spec={"base": {"dataset": "cifar10", "model": "wrn"}})
    assert views.job_row(sweep, T0)["dataset"] == "cifar10" and views.job_row(sweep, T0)["model"] == "wrn"


def test_epoch_series_keeps_one_report_per_epoch_and_the_loss_parts_in_order() -> None:
    history = [
        {"epoch": 1, "losses": {"ce": 2.0}, "monitor": {"clean": 0.5, "union": 0.1}},
        {"epoch": 2, "losses": {"ce": 1.5, "pairing": 0.3}, "monitor": {"clean": 0.6, "union": 0.2}},
        # Epoch 2 again, from a retried attempt that resumed from the epoch-1 checkpoint.
        {"epoch": 2, "losses": {"ce": 1.4, "pairing": 0.2}, "monitor": {"clean": 0.65, "union": 0.25}},
    ]
    series = views.epoch_series(history)
    assert series["epochs"] == [1, 2]
    assert series["accuracy"]["union"] == [0.1, 0.25] and series["accuracy"]["linf"] == [None, None]
    assert series["losses"] == {"ce": [2.0, 1.4], "pairing": [None, 0.2]}
    assert series["upper_bound"] is True and series["has_monitor"] is True
    assert views.epoch_series([{"epoch": 1, "losses": {"ce": 2.0}, "monitor": {}}])["has_monitor"] is False
