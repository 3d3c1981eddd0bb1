"""Sweeps on Ray Tune: the trial's result logic and the driver-side recorder (fast), then real
2x2 grid sweeps on a local Ray (slow): every trial recorded, the best one chosen from the
recorded numbers, and a cancel that frees every CPU.
"""

from __future__ import annotations

import json
import pickle
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from ray.tune.schedulers import ASHAScheduler
from ray.tune.stopper import NoopStopper
from ray_support import wait_all_cpus_free

from workers.contract.spec import TrainSpec
from workers.contract.sweep import parse_sweep_spec
from workers.ray_entry.runtime import CANCELLED, CHECKPOINT, EPOCH_END, STEP, TRAIN_END
from workers.ray_entry.sweep.evaluation import run_best_final
from workers.ray_entry.sweep.recorder import CancelStopper, Recorder, TrialRecord
from workers.ray_entry.sweep.runs import LocalRun
from workers.ray_entry.sweep.trainable import RESULT_KEY, TrainTrial, TrialCancelled, TrialFailed
from workers.ray_entry.sweep.tuner import RESULT_FILE, asha_scheduler, run_sweep, trial_specs
from workers.training.callbacks import EpochReport

# --- fast: the pieces, without a cluster ---------------------------------------------------------


def _epoch(epoch: int, epochs: int, union: float) -> dict:
    return EpochReport(epoch=epoch, epochs=epochs, step=epoch * 4, total_steps=epochs * 4, lr=0.1,
                       losses={"ce": 1.0}, monitor={"union": union, "clean": 0.9}).to_dict()


class _Run:
    runner = "in-trial"

    def __init__(self, alive: bool, error: BaseException | None = None) -> None:
        self.alive, self.error = alive, error

    def is_alive(self) -> bool:
        return self.alive

    def describe_error(self) -> str:
        return str(self.error)


def _trial(events: list, *, alive: bool, error: BaseException | None = None) -> TrainTrial:
    t = object.__new__(TrainTrial)  # only the event bookkeeping, no actor
    t._key, t._pending, t._checkpoint = "trial_0000", deque(events), None
    t._final, t._cancelled = None, None
    t._run = _Run(alive, error)
    return t


def test_trial_reports_one_epoch_per_step_and_the_last_with_its_final_metrics():
    t = _trial([(STEP, (1, 8)), (CHECKPOINT, "/c"), (EPOCH_END, _epoch(1, 2, 0.25)), (STEP, (5, 8))],
               alive=True)
    first = t._next_result(finished=False)
    assert first["union"] == 0.25 and first["epoch"] == 1 and "done" not in first
    ours = first[RESULT_KEY]
    assert ours["checkpoint"] == "/c" and ours["final"] is None
    assert ours["metrics"] == {k: v for k, v in first.items() if k != RESULT_KEY}
    t._pending.extend([(CHECKPOINT, "/c"), (EPOCH_END, _epoch(2, 2, 0.5))])
    # the last epoch waits for the run to end: its final evaluation comes with it
    assert t._next_result(finished=False) is None
    t._pending.append((TRAIN_END, {"union": 0.4}))
    t._run.alive = False
    last = t._next_result(finished=True)
    assert last["done"] is True and last["union"] == 0.5 and last[RESULT_KEY]["final"] == {"union": 0.4}


def test_trial_end_errors():
    failed = _trial([], alive=False, error=RuntimeError("worker died"))
    assert failed._next_result(finished=True) is None
    assert isinstance(failed._end_error(), TrialFailed) and "worker died" in str(failed._end_error())
    stopped = _trial([(CANCELLED, "cancelled after step 3")], alive=False)
    assert stopped._next_result(finished=True) is None
    assert isinstance(stopped._end_error(), TrialCancelled)
    # a failure in the final evaluation fails the trial even though its last epoch was reported
    late = _trial([(EPOCH_END, _epoch(1, 1, 0.1))], alive=False, error=RuntimeError("eval broke"))
    with pytest.raises(TrialFailed, match="eval broke"):
        late._next_result(finished=True)


class _FakeTrial:
    def __init__(self, trial_id: str, tune_id: str, error: str | None = None) -> None:
        self.config = {"trial": {"trial_id": trial_id}}
        self.trial_id, self._error = tune_id, error

    def get_error(self) -> str | None:
        return self._error


def _records() -> dict[str, TrialRecord]:
    return {f"trial_000{i}": TrialRecord(f"trial_000{i}", i, {"lr": 0.1 * (i + 1)}) for i in range(4)}


def _result(epoch: int, union: float, final: dict | None = None) -> dict[str, Any]:
    metrics = {"epoch": epoch, "union": union}
    return metrics | {"training_iteration": epoch, RESULT_KEY: {"metrics": metrics, "checkpoint": "/ck",
                                                                "final": final}}


def test_recorder_tracks_statuses_and_emits_events():
    records, events, cancelled = _records(), [], threading.Event()
    rec = Recorder(records, events.append, cancelled)
    a, b, c = (_FakeTrial(f"trial_000{i}", f"t{i}") for i in range(3))
    rec.on_trial_start(0, [], a)
    rec.on_trial_result(0, [], a, _result(1, 0.2))
    rec.on_trial_result(0, [], a, _result(2, 0.3, final={"union": 0.25}))
    rec.on_trial_complete(0, [], a)
    rec.on_trial_start(0, [], b)
    rec.on_trial_result(0, [], b, _result(1, 0.1))
    rec.on_trial_complete(0, [], b)  # ended by the scheduler before its last epoch
    rec.on_trial_start(0, [], c)
    c._error = "Traceback ...\nTrialFailed: trial trial_0002: boom"
    rec.on_trial_error(0, [], c)
    rec.finish_unended("failed")
    assert [(r.status, len(r.metrics)) for r in records.values()] == [
        ("succeeded", 2), ("stopped", 1), ("failed", 0), ("failed", 0)]
    assert records["trial_0000"].final == {"union": 0.25} and records["trial_0000"].tune_trial_id == "t0"
    assert records["trial_0000"].metrics == [{"epoch": 1, "union": 0.2}, {"epoch": 2, "union": 0.3}]
    assert records["trial_0002"].error.endswith("boom")
    kinds = [(e["type"], e["trial_id"]) for e in events]
    assert kinds[:4] == [("trial_start", "trial_0000"), ("trial_result", "trial_0000"),
                         ("trial_result", "trial_0000"), ("trial_end", "trial_0000")]
    assert kinds[-1] == ("trial_end", "trial_0003") and events[-1]["status"] == "failed"
    assert events[1]["config"] == {"lr": 0.1} and events[1]["epoch"] == 1
    assert events[1]["metrics"]["union"] == 0.2


def test_recorder_marks_everything_cancelled_once_the_sweep_is_cancelled():
    records, cancelled = _records(), threading.Event()
    rec = Recorder(records, None, cancelled)
    a, b = _FakeTrial("trial_0000", "t0", error="TrialCancelled"), _FakeTrial("trial_0001", "t1")
    rec.on_trial_start(0, [], a)
    rec.on_trial_start(0, [], b)
    cancelled.set()
    rec.on_trial_error(0, [], a)
    rec.on_trial_complete(0, [], b)
    rec.finish_unended("cancelled")
    assert {r.status for r in records.values()} == {"cancelled"}


def test_live_driver_objects_pickle_to_inert_ones():
    # Tune pickles callbacks and stoppers into its experiment state; ours hold events and actors.
    event = threading.Event()
    rec = pickle.loads(pickle.dumps(Recorder(_records(), print, event)))
    assert type(rec).__name__ == "Callback"
    stopper = pickle.loads(pickle.dumps(CancelStopper(event, object())))
    assert isinstance(stopper, NoopStopper)
    assert CancelStopper(event, object()).stop_all() is False


def test_asha_is_built_on_epochs():
    base = {"method": "nt", "epochs": 3}
    spec = parse_sweep_spec({"base": base, "param_space": {"lr": {"grid": [0.1, 0.2]}},
                             "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3}})
    sched = asha_scheduler(spec, trial_specs(spec))
    assert isinstance(sched, ASHAScheduler)
    assert (sched._time_attr, sched._reduction_factor, sched._max_t) == ("epoch", 3, 3)
    unscheduled = parse_sweep_spec({"base": base, "param_space": {"lr": {"grid": [0.1]}}})
    assert asha_scheduler(unscheduled, trial_specs(unscheduled)) is None


# --- slow: real sweeps on a local Ray --------------------------------------------------------------

BASE = {"kind": "train", "method": "nt", "dataset": "mnist-5k", "model": "small-cnn", "epochs": 2,
        "train_n": 128, "batch_size": 32, "monitor_n": 16, "monitor_steps": 2, "eval_n": 16, "checks_n": 0,
        "seed": 0,
        "resources": {"num_workers": 1, "cpus_per_worker": 1}}
GRID = {"lr": {"grid": [0.01, 0.1]}, "seed": {"grid": [0, 1]}}


@pytest.mark.slow
def test_grid_sweep_records_every_trial_and_picks_the_best(ray_local, tmp_path):
    events: list[dict] = []
    spec = {"kind": "sweep", "base": BASE, "param_space": GRID, "metric": "union", "mode": "max",
            "max_concurrent_trials": 2}
    result = run_sweep(parse_sweep_spec(spec), tmp_path, on_trial_event=events.append)

    assert not result.cancelled
    trials = {t["trial_id"]: t for t in result.trials}
    assert [t["config"] for t in result.trials] == [
        {"lr": 0.01, "seed": 0}, {"lr": 0.01, "seed": 1}, {"lr": 0.1, "seed": 0}, {"lr": 0.1, "seed": 1}]
    for tid, t in trials.items():
        assert t["status"] == "succeeded", t
        assert [m["epoch"] for m in t["metrics"]] == [1, 2]
        assert all(0.0 <= m["union"] <= 1.0 for m in t["metrics"])
        assert t["final"]["n"] == 16 and 0.0 <= t["final"]["union"] <= 1.0
        assert t["checkpoint"] == str(tmp_path / "trials" / tid / "checkpoint")
        meta = json.loads((Path(t["checkpoint"]) / "meta.json").read_text())
        assert meta["spec"]["lr"] == t["config"]["lr"] and meta["spec"]["seed"] == t["config"]["seed"]
        assert meta["epoch"] == 2
        # one worker: the loop ran inside the Tune trial (no Ray Train storage), and the trial's own
        # evaluation is the monitor suite, labelled an upper bound
        assert t["runner"] == "in-trial" and not (tmp_path / "trials" / tid / "ray").exists()
        assert t["final"]["suite"] == "monitor" and t["final"]["upper_bound"] is True
        # each trial's events: start, one result per epoch, end (in that order)
        mine = [e for e in events if e["trial_id"] == tid]
        assert [e["type"] for e in mine] == ["trial_start", "trial_result", "trial_result", "trial_end"]
        assert [e["metrics"] for e in mine if e["type"] == "trial_result"] == t["metrics"]
        assert mine[-1]["status"] == "succeeded" and mine[0]["config"] == t["config"]

    # the best trial, recomputed from the recorded numbers: highest last-epoch union, first on ties
    last = [t["metrics"][-1]["union"] for t in result.trials]
    expected = result.trials[last.index(max(last))]["trial_id"]
    assert result.best_trial_id == expected
    assert result.best_checkpoint == trials[expected]["checkpoint"]
    # only the best trial is evaluated with the default suite (eval_n points): the sweep's numbers
    final = result.best_final
    assert final["suite"] == "standard" and final["upper_bound"] is False and final["n"] == 16
    assert final["checkpoint"] == trials[expected]["checkpoint"]
    written = {tid: json.loads((tmp_path / "trials" / tid / "metrics.json").read_text()) for tid in trials}
    assert written[expected] == final
    assert all(m["suite"] == "monitor" for tid, m in written.items() if tid != expected)
    assert result.numbers["best_final"]["suite"] == "standard"
    assert result.numbers["trials.final"]["suite"] == "monitor"
    assert result.numbers["trials.final"]["upper_bound"] is True
    assert result.best_final_error is None and 0 < result.best_final_seconds < result.seconds
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == json.loads(json.dumps(result.to_dict()))
    assert (tmp_path / "tune" / "sweep").is_dir()
    assert wait_all_cpus_free(ray_local) == ray_local.cluster_resources()["CPU"]


@pytest.mark.slow
def test_cancel_stops_all_trials_and_frees_resources(ray_local, tmp_path):
    stop = threading.Event()
    events: list[dict] = []

    def on_event(event: dict) -> None:
        events.append(event)
        if event["type"] == "trial_result":
            stop.set()

    spec = {"kind": "sweep", "base": BASE | {"epochs": 3}, "param_space": GRID, "max_concurrent_trials": 2}
    started = time.monotonic()
    result = run_sweep(parse_sweep_spec(spec), tmp_path, on_trial_event=on_event, stop_event=stop)
    assert result.cancelled
    assert [t["status"] for t in result.trials] == ["cancelled"] * 4
    # no trial ran to its end, and the two never started trials never ran at all
    assert all(len(t["metrics"]) < 3 and t["final"] is None for t in result.trials)
    started_ids = {e["trial_id"] for e in events if e["type"] == "trial_start"}
    assert len(started_ids) == 2
    ends = [e for e in events if e["type"] == "trial_end"]
    assert sorted(e["trial_id"] for e in ends) == [t["trial_id"] for t in result.trials]
    assert all(e["status"] == "cancelled" for e in ends)
    assert wait_all_cpus_free(ray_local) == ray_local.cluster_resources()["CPU"]
    assert time.monotonic() - started < 300


@pytest.mark.slow
def test_trials_asking_for_two_workers_train_on_ray_train(ray_local, tmp_path):
    base = BASE | {"epochs": 1, "resources": {"num_workers": 2, "cpus_per_worker": 1}}
    spec = {"kind": "sweep", "base": base, "param_space": {"lr": {"grid": [0.05]}}}
    result = run_sweep(parse_sweep_spec(spec), tmp_path)

    (t,) = result.trials
    assert t["status"] == "succeeded" and t["runner"] == "ray-train"
    assert (tmp_path / "trials" / t["trial_id"] / "ray").is_dir()  # the TorchTrainer's storage
    assert [m["epoch"] for m in t["metrics"]] == [1]
    assert t["final"]["suite"] == "monitor" and t["final"]["n"] == 16
    assert result.best_trial_id == t["trial_id"]
    assert result.best_final["suite"] == "standard" and result.best_final["n"] == 16
    assert wait_all_cpus_free(ray_local) == ray_local.cluster_resources()["CPU"]


@pytest.mark.slow
def test_a_cancel_during_the_best_trials_evaluation_kills_it_and_frees_its_cpus(ray_local, tmp_path):
    train = {k: v for k, v in BASE.items() if k not in ("kind", "resources")}
    spec = TrainSpec.model_validate(train | {"epochs": 1, "eval_n": 1000, "checks_n": 100}).resolve()
    run = LocalRun(spec, tmp_path, device="cpu")
    run.start()
    run.join(120)
    assert run.take()[-1][0] == "train_end"
    total = ray_local.cluster_resources()["CPU"]
    stop = threading.Event()

    def cancel_once_it_holds_the_cpus() -> None:
        deadline = time.monotonic() + 120
        while ray_local.available_resources().get("CPU", 0.0) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # well inside the default suite on 1,000 points
        stop.set()

    threading.Thread(target=cancel_once_it_holds_the_cpus, daemon=True).start()
    started = time.monotonic()
    final, error = run_best_final("trial_0000", spec, tmp_path,
                                   {"num_cpus": total, "num_gpus": 0.0}, stop)
    assert stop.is_set() and final is None and error is None
    assert time.monotonic() - started < 150
    assert wait_all_cpus_free(ray_local) == total
    # the evaluation never finished: the trial directory still holds the trial's monitor numbers
    assert json.loads((tmp_path / "metrics.json").read_text())["suite"] == "monitor"
