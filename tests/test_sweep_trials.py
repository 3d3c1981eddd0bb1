"""A sweep trial's pieces without a Ray cluster: the in-trial training run (the loop in the trial's
own thread: events, checkpoint, cancel, failure), the trial's monitor evaluation and the best
trial's default-suite evaluation, and the resources Tune reserves for each kind of trial."""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from workers import checkpoint
from workers.contract.spec import Resources, TrainSpec
from workers.contract.sweep import plan_resources
from workers.ray_entry.runtime import CANCELLED, CHECKPOINT, EPOCH_END, TRAIN_END
from workers.ray_entry.sweep.evaluation import TRIAL_EVAL_N, evaluate_best, trial_eval_n
from workers.ray_entry.sweep.resources import (
    IN_TRIAL,
    RAY_TRAIN,
    best_final_resources,
    largest_node_cpus,
    trial_resources,
    trial_runner,
    trial_threads,
)
from workers.ray_entry.sweep.runs import LocalRun
from workers.ray_entry.sweep.trainable import RESULT_KEY, TrainTrial, TrialCancelled, TrialFailed

TINY = {"method": "nt", "dataset": "mnist-5k", "model": "small-cnn", "epochs": 2, "train_n": 64,
        "batch_size": 32, "monitor_n": 8, "monitor_steps": 2, "eval_n": 12, "checks_n": 4, "seed": 0}


def _spec(**overrides: Any) -> TrainSpec:
    # resolved, as run_sweep's trial_specs hands every trial and the best trial's evaluation
    return TrainSpec.model_validate(TINY | overrides).resolve()


def _trial(run: LocalRun) -> TrainTrial:
    t = object.__new__(TrainTrial)  # the trial's step logic around a real run, without an actor
    t._key, t._pending, t._checkpoint, t._final, t._cancelled = "trial_0000", deque(), None, None, None
    t._run = run
    return t


def test_an_in_trial_run_reports_each_epoch_and_ends_with_its_monitor_evaluation(tmp_path: Path) -> None:
    trial = _trial(LocalRun(_spec(), tmp_path, device="cpu"))
    trial._run.start()
    first, last = trial.step(), trial.step()
    assert first["epoch"] == 1 and "done" not in first and first[RESULT_KEY]["final"] is None
    assert last["epoch"] == 2 and last["done"] is True
    assert first[RESULT_KEY]["runner"] == last[RESULT_KEY]["runner"] == IN_TRIAL
    assert last[RESULT_KEY]["checkpoint"] == str(tmp_path / "checkpoint")
    final = last[RESULT_KEY]["final"]
    # the trial's own evaluation: the monitor suite (an upper bound) on its held-out points
    assert final["suite"] == "monitor" and final["upper_bound"] is True and final["n"] == 8
    assert "checks" not in final and set(final["attacks"]["linf"]) == {"apgd"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == final
    _, meta = checkpoint.load(tmp_path)
    assert meta["epoch"] == 2 and meta["metrics"] == final
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "ray").exists()  # no Ray Train storage: the loop ran in the trial itself
    assert not trial._run.is_alive()


def test_the_trial_evaluation_is_sized_down_to_the_held_out_points() -> None:
    assert trial_eval_n(_spec(monitor_n=16, eval_n=1000)) == 16
    assert trial_eval_n(_spec(monitor_n=500, eval_n=100)) == 100
    assert trial_eval_n(_spec(monitor_n=0, eval_n=1000)) == TRIAL_EVAL_N == 200
    assert trial_eval_n(_spec(eval_n=0)) == 0


def test_an_in_trial_run_stops_at_its_next_step_once_cancelled(tmp_path: Path) -> None:
    asked = threading.Event()

    def poll() -> bool:  # the sweep's channel says "cancelled" from the second question on
        if asked.is_set():
            return True
        asked.set()
        return False

    run = LocalRun(_spec(epochs=500), tmp_path, device="cpu", poll_cancel=poll)
    trial = _trial(run)
    run._watch.poll_s = 0.0
    run.start()
    run.join(60)
    assert not run.is_alive() and run.error is None
    events = run.take()
    assert events[-1][0] == CANCELLED and "after step 1 of" in events[-1][1]
    assert TRAIN_END not in [kind for kind, _ in events]
    trial._pending.extend(events)
    with pytest.raises(TrialCancelled):
        trial.step()


def test_stopping_an_in_trial_run_waits_for_it(tmp_path: Path) -> None:
    run = LocalRun(_spec(epochs=500), tmp_path, device="cpu")
    run.start()
    run.stop()
    assert not run.is_alive()
    kinds = [kind for kind, _ in run.take()]
    assert kinds[-1] == CANCELLED and set(kinds) <= {CHECKPOINT, EPOCH_END, CANCELLED}


def test_a_failing_in_trial_run_fails_the_trial_with_its_error(tmp_path: Path) -> None:
    # An arg the spec would refuse (workers.contract.model_args), slipped past it to fail in the trial.
    broken = _spec().model_copy(update={"model_args": {"no_such_arg": 1}})
    trial = _trial(LocalRun(broken, tmp_path, device="cpu"))
    trial._run.start()
    with pytest.raises(TrialFailed, match="no_such_arg"):
        trial.step()


def test_the_best_trial_is_evaluated_with_the_default_suite_and_its_checks(tmp_path: Path) -> None:
    run = LocalRun(_spec(), tmp_path, device="cpu")
    run.start()
    run.join(60)
    monitor = run.take()[-1][1]
    metrics = evaluate_best(_spec(), str(tmp_path), device="cpu", threads=1)
    assert metrics["suite"] == "standard" and metrics["upper_bound"] is False
    assert metrics["n"] == 12 and metrics["checks"]["n"] == 4
    # the default suite's attacks, after a bfloat16 screen where that precision is native
    assert set(metrics["attacks"]["l1"]) - {"bf16-screen"} == {"apgd-ce", "apgd-t"}
    assert metrics["precision"] in ("fp32", "bf16-screen+fp32")
    assert metrics["clean"] == pytest.approx(round(metrics["clean"] * 12) / 12)
    # what the trial directory and its checkpoint now say is the default suite, not the monitor
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert checkpoint.load_metadata(tmp_path / "checkpoint")["metrics"]["suite"] == "standard"
    assert monitor["suite"] == "monitor"


def test_one_worker_trials_train_in_their_own_actor_and_reserve_their_whole_share() -> None:
    plan = plan_resources(Resources(num_workers=1, cpus_per_worker=1), total_cpus=2, total_gpus=0,
                          max_concurrent_trials=2)
    assert trial_runner(plan) == IN_TRIAL
    assert trial_resources(plan) == {"cpu": 1.0} and trial_threads(plan) == 1
    assert plan.max_concurrent_trials * trial_resources(plan)["cpu"] <= 2  # both fit: no waiting
    assert best_final_resources(plan, 2) == {"num_cpus": 2.0, "num_gpus": 0.0}
    wide = plan_resources(Resources(num_workers=1, cpus_per_worker=2), total_cpus=2, total_gpus=0,
                          max_concurrent_trials=2)
    assert wide.max_concurrent_trials == 1 and trial_resources(wide) == {"cpu": 2.0}
    assert trial_threads(wide) == 2
    gpu = plan_resources(Resources(num_workers=1, cpus_per_worker=1, use_gpu=True), total_cpus=4,
                         total_gpus=1, max_concurrent_trials=2)
    # the plan's share (token + worker CPU, nothing trimmed on 4 CPUs) and the trial's GPU
    assert trial_resources(gpu) == {"cpu": 1.01, "gpu": 1.0} and gpu.max_concurrent_trials == 1
    assert trial_threads(gpu) == 1
    assert best_final_resources(gpu, 4) == {"num_cpus": 1.01, "num_gpus": 1.0}


def test_several_worker_trials_run_ray_train_and_their_actor_takes_a_token_cpu() -> None:
    plan = plan_resources(Resources(num_workers=2, cpus_per_worker=1), total_cpus=2, total_gpus=0,
                          max_concurrent_trials=2)
    assert trial_runner(plan) == RAY_TRAIN
    assert trial_resources(plan) == {"cpu": 0.01} and trial_threads(plan) == 1
    # the trial actors and all their workers fit at once (Tune over Train deadlocks otherwise)
    per_trial = trial_resources(plan)["cpu"] + plan.num_workers * plan.cpus_per_worker
    assert plan.max_concurrent_trials * per_trial <= 2 + 1e-9
    assert best_final_resources(plan, 2)["num_cpus"] <= 2


def test_the_best_trials_evaluation_fits_on_one_node() -> None:
    # Two one-CPU worker nodes (and a head without CPUs): the trials ran one per node; their
    # evaluation, one task, must not ask for both nodes' CPUs at once.
    plan = plan_resources(Resources(num_workers=1, cpus_per_worker=1), total_cpus=2, total_gpus=0,
                          max_concurrent_trials=2)
    nodes = [{"Alive": True, "Resources": {"CPU": 1.0, "node_a": 1.0}},
             {"Alive": True, "Resources": {"CPU": 1.0, "node_b": 1.0}},
             {"Alive": True, "Resources": {"memory": 1e9}},  # the head
             {"Alive": False, "Resources": {"CPU": 8.0}}]   # a node that died
    assert largest_node_cpus(nodes) == 1.0
    assert best_final_resources(plan, 2, largest_node_cpus(nodes)) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert best_final_resources(plan, 2, 4.0) == best_final_resources(plan, 2)
    assert largest_node_cpus([]) is None


def test_a_trial_starts_training_at_its_first_step_not_at_setup(tmp_path: Path) -> None:
    # Tune may drop a set-up actor and hand its trial a cached one (reuse_actors): the dropped
    # actor must not have trained, and its cleanup must not cancel the trial's real run.
    config = {"trial": {"trial_id": "trial_0002", "spec": TINY},
              "run": {"channel": "unused", "trials_dir": str(tmp_path), "runner": IN_TRIAL, "threads": 1}}
    trial = object.__new__(TrainTrial)
    trial._prepare(config)
    assert trial._run is None and trial._run_key is None
    trial.cleanup()  # nothing to stop, no channel asked
    assert not (tmp_path / "trial_0002").exists()
