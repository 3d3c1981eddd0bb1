"""A sweep end to end through the service on a real local Ray head (2 CPUs): a 2x2 grid of tiny
RAMP training runs as Ray Tune trials, four trials recorded with their metrics and checkpoints, the
best trial chosen from the recorded metrics, a fine-tune job from a trial's checkpoint accepted;
then a running sweep cancelled: every trial stops and the cluster's CPUs are free again."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from exec_support import events, service_on_ray_head, tiny_train_spec, wait_for, wait_status

from workers.contract.sweep import best_trial

pytestmark = pytest.mark.slow

GRID = {"params.ramp.lambda": {"grid": [0.5, 5]}, "lr": {"grid": [0.01, 0.1]}}
_USAGE = re.compile(r"ResourceUsage: ([0-9.]+)/([0-9.]+) CPU")


def sweep_spec(**base_overrides: Any) -> dict[str, Any]:
    base = tiny_train_spec(monitor_n=16, eval_n=16) | base_overrides
    # The training loss differs between the two learning rates, so the best trial is not a tie
    # that the first trial wins by default.
    return {"kind": "sweep", "base": base, "param_space": GRID, "num_samples": 1, "metric": "loss_ce",
            "mode": "min", "max_concurrent_trials": 2, "scheduler": None}


def cpu_usage(dashboard_url: str) -> tuple[float, float] | None:
    """(CPUs in use, CPUs in total) as Ray's autoscaler reports them, or None before its first report."""
    r = httpx.get(f"{dashboard_url}/api/cluster_status", timeout=10)
    status = (r.json().get("data") or {}).get("autoscalingStatus") or ""
    m = _USAGE.search(status)
    return (float(m.group(1)), float(m.group(2))) if m else None


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with service_on_ray_head(tmp_path_factory.mktemp("home"), num_cpus=2) as client:
        yield client


def test_a_2x2_grid_sweep_records_four_trials_and_the_best(service: Any) -> None:
    r = service.post("/v1/jobs", json=sweep_spec())
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = wait_status(service, job_id, {"succeeded", "failed", "cancelled"}, 600)
    assert job["status"] == "succeeded", (job, service.get(f"/v1/jobs/{job_id}/logs").text[-3000:])

    listing = service.get(f"/v1/jobs/{job_id}/trials").json()
    trials = listing["trials"]
    assert [t["trial_id"] for t in trials] == ["trial_0000", "trial_0001", "trial_0002", "trial_0003"]
    assert [(t["config"]["params.ramp.lambda"], t["config"]["lr"]) for t in trials] == [
        (0.5, 0.01), (0.5, 0.1), (5, 0.01), (5, 0.1)]
    job_dir = Path(service.settings.job_dir(job_id))
    for t in trials:
        assert t["status"] == "succeeded" and t["attempt"] == 1, (t["trial_id"], t["status"], t["error"])
        assert [m["epoch"] for m in t["metrics"]] == [1]
        assert t["metrics"][0]["lr"] == pytest.approx(t["config"]["lr"])
        assert all(0.0 <= t["final"][k] <= 1.0 for k in ("clean", "linf", "l2", "l1", "union"))
        assert t["checkpoint"] == f"trials/{t['trial_id']}/checkpoint"
        assert (job_dir / t["checkpoint"] / "model.safetensors").is_file()
        assert t["spec"]["params"]["ramp.lambda"] == t["config"]["params.ramp.lambda"]

    # The best trial, recomputed here from the recorded metrics: last epoch's loss_ce, lowest wins.
    expected = best_trial(trials, "loss_ce", "min")
    losses = {t["trial_id"]: t["metrics"][-1]["loss_ce"] for t in trials}
    assert losses[expected] == min(losses.values())
    assert len({round(v, 9) for v in losses.values()}) > 1  # not a tie across the board
    result = job["metrics"]
    assert listing["best_trial_id"] == result["best_trial_id"] == expected
    assert result["best_score"] == pytest.approx(losses[expected])
    assert result["best_checkpoint"] == f"trials/{expected}/checkpoint"
    assert result["trials"] == {"succeeded": 4}
    best_final = next(t["final"] for t in trials if t["trial_id"] == expected)
    assert result["union"] == best_final["union"] and result["clean"] == best_final["clean"]
    # The best trial's numbers are the default suite's; every other trial's its monitor upper bound.
    assert result["suite"] == best_final["suite"] == "standard" and result["upper_bound"] is False
    assert result["n"] == 16 and best_final["monitor"] == result["best_monitor"]
    assert result["best_monitor"]["suite"] == "monitor" and result["best_monitor"]["upper_bound"] is True
    others = [t["final"] for t in trials if t["trial_id"] != expected]
    assert all(f["suite"] == "monitor" and f["upper_bound"] is True for f in others)

    # The best checkpoint is an artifact of the sweep (and its own checkpoint/ link).
    names = {a["name"] for a in service.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]}
    assert f"trials/{expected}/checkpoint/model.safetensors" in names
    assert "checkpoint/model.safetensors" in names and "sweep_result.json" in names
    kinds = {e["data"]["event"] for e in events(service, job_id, "trial")}
    assert kinds == {"sweep_start", "trial_start", "trial_result", "trial_end"}

    # A later fine-tune can start from any trial's checkpoint, or the sweep's best.
    ft = {"kind": "finetune", "method": "ramp", "epochs": 1, "max_steps": 1,
          "init_from": {"job_id": job_id, "trial": "trial_0002"}}
    r = service.post("/v1/jobs", json=ft)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["init_from"] == str(job_dir / "trials" / "trial_0002" / "checkpoint")
    service.post(f"/v1/jobs/{r.json()['id']}/cancel")  # only its acceptance is under test here
    r = service.post("/v1/jobs", json={"kind": "eval", "job_id": job_id, "n": 8})
    assert r.status_code == 201 and r.json()["spec"]["source_trial"] == expected
    service.post(f"/v1/jobs/{r.json()['id']}/cancel")
    wait_for(lambda: not service.get("/v1/jobs", params={"status": "dispatching,running,cancelling"})
             .json()["jobs"], 120, "the side jobs to finish")


def test_cancelling_a_sweep_stops_its_trials_and_frees_the_cpus(service: Any) -> None:
    dashboard = service.head.dashboard_url
    wait_for(lambda: (u := cpu_usage(dashboard)) is not None and u[0] == 0.0, 90, "an idle cluster", 1.0)
    long_sweep = sweep_spec(epochs=50, max_steps=None, train_n=256)
    job_id = service.post("/v1/jobs", json=long_sweep).json()["id"]
    # Cancel once trials really train: their Ray Train workers hold the cluster's CPUs.
    wait_for(lambda: any(e["data"]["event"] == "trial_result" for e in events(service, job_id, "trial")),
             300, "a trial's first epoch", 0.5)
    used, total = wait_for(lambda: (u := cpu_usage(dashboard)) is not None and u[0] >= 0.9 and u, 60,
                           "the trials' CPUs to show as used", 1.0)
    assert total == 2.0 and used <= total
    started = time.monotonic()
    r = service.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelling"
    job = wait_status(service, job_id, {"cancelled", "failed", "succeeded"}, 120)
    assert job["status"] == "cancelled", job
    # Every trial stopped: none is left pending or running, none finished after the cancel.
    trials = service.get(f"/v1/jobs/{job_id}/trials").json()["trials"]
    assert {t["status"] for t in trials} <= {"cancelled"}, [(t["trial_id"], t["status"]) for t in trials]
    # The cluster's CPUs are all free again: no trial actor, Train worker or placement group left.
    wait_for(lambda: (u := cpu_usage(dashboard)) is not None and u[0] == 0.0, 90,
             "every CPU of the cluster to be released", 1.0)
    assert time.monotonic() - started < 150
    r = httpx.get(f"{dashboard}/api/v0/placement_groups", timeout=10).json()
    alive = [pg for pg in r["data"]["result"]["result"] if pg.get("state") not in ("REMOVED",)]
    assert alive == [], alive


def test_cancelling_a_sweep_waiting_for_cpus_leaks_no_placement_group(service: Any) -> None:
    """A sweep whose trials wait for CPUs another job holds (their placement groups pending) is
    cancelled: nothing of it may stay reserved once the other job's CPUs come free. A one-worker
    trial reserves its whole CPU share in Tune, so with one of the two CPUs taken one trial runs and
    the next one waits for Tune's placement group."""
    dashboard = service.head.dashboard_url
    wait_for(lambda: (u := cpu_usage(dashboard)) is not None and u[0] == 0.0, 90, "an idle cluster", 1.0)
    long_run = {"epochs": 50, "max_steps": None, "train_n": 256}
    train_id = service.post("/v1/jobs", json=tiny_train_spec(**long_run)).json()["id"]
    wait_status(service, train_id, {"running"}, 120)
    # The train job holds one CPU before the sweep starts (else a trial could take it first).
    wait_for(lambda: (u := cpu_usage(dashboard)) is not None and u[0] >= 1.0, 120, "the train job's CPU", 1.0)
    job_id = service.post("/v1/jobs", json=sweep_spec(**long_run)).json()["id"]
    wait_for(lambda: sum(e["data"]["event"] == "trial_start" for e in events(service, job_id, "trial")) >= 1,
             300, "a trial to start", 0.5)
    time.sleep(5)  # the sweep's next trial now waits for a CPU the train job holds
    statuses = [t["status"] for t in service.get(f"/v1/jobs/{job_id}/trials").json()["trials"]]
    assert statuses.count("running") == 1 and statuses.count("pending") == 3, statuses
    assert service.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = wait_status(service, job_id, {"cancelled", "failed", "succeeded"}, 120)
    assert job["status"] == "cancelled", job
    assert {t["status"] for t in service.get(f"/v1/jobs/{job_id}/trials").json()["trials"]} == {"cancelled"}
    assert service.post(f"/v1/jobs/{train_id}/cancel").status_code == 200
    wait_status(service, train_id, {"cancelled"}, 120)
    wait_for(lambda: (u := cpu_usage(dashboard)) is not None and u[0] == 0.0, 90,
             "every CPU of the cluster to be released", 1.0)
