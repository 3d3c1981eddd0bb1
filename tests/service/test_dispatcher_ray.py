"""The whole service against a real local Ray head: a tiny real RAMP training job runs to
``succeeded`` with its metrics recorded, and a running job is cancelled (Ray stops it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exec_support import events, service_on_ray_head, tiny_train_spec, wait_for, wait_status

pytestmark = pytest.mark.slow
ACCURACY_KEYS = ("clean", "linf", "l2", "l1", "union")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with service_on_ray_head(tmp_path_factory.mktemp("home")) as client:
        yield client


def test_a_training_job_runs_to_succeeded_with_metrics(service: Any) -> None:
    r = service.post("/v1/jobs", json=tiny_train_spec(), headers={"Idempotency-Key": "tiny-1"})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = wait_status(service, job_id, {"succeeded", "failed", "cancelled"}, 180)
    assert job["status"] == "succeeded", job
    metrics = job["metrics"]
    assert all(0.0 <= metrics[k] <= 1.0 for k in ACCURACY_KEYS) and metrics["n"] == 16
    assert metrics["union"] <= min(metrics[k] for k in ("clean", "linf", "l2", "l1"))
    t = job["timings"]
    assert t["queued_at"] <= t["dispatching_at"] <= t["running_at"] <= t["succeeded_at"]
    assert job["ray_job_id"] and job["ray_dashboard_url"].endswith(job["ray_job_id"])
    assert service.head.dashboard_url in job["ray_dashboard_url"]

    history = service.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [h["epoch"] for h in history["history"]] == [1] and history["final"] == metrics
    kinds = {e["type"] for e in events(service, job_id)}
    assert {"status", "log", "progress", "metrics", "artifact"} <= kinds
    names = {a["name"] for a in service.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]}
    assert {"metrics.json", "history.jsonl", "checkpoint/model.safetensors", "result.json"} <= names
    logs = service.get(f"/v1/jobs/{job_id}/logs")
    assert logs.status_code == 200 and "workers.jobs.driver" in logs.text
    _readable_in_the_ray_dashboard(service, job)
    assert service.head.processes()  # the head is still ours and alive for the next test


def _readable_in_the_ray_dashboard(service: Any, job: dict[str, Any]) -> None:
    """Ray's own job API says what the job trains, for whom, and where its page is; the Ray Train
    run is named after the job (its directory under the job's storage is that name)."""
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(service.head.dashboard_url).get_job_info(job["ray_job_id"])
    spec = service.get(f"/v1/jobs/{job['id']}").json()["spec"]
    run = f"ramp-{job['id']}-ramp-train"
    assert info.submission_id == job["ray_job_id"] and job["ray_job_id"].startswith(f"ramp-{job['id']}-a1-")
    assert info.metadata == {
        "ramp_job_id": str(job["id"]), "ramp_attempt": "1", "ramp_kind": "train", "ramp_method": "ramp",
        "ramp_dataset": spec["dataset"], "ramp_model": spec["model"], "ramp_owner": "admin",
        "ramp_run_name": run, "ramp_page_url": f"{service.settings.external_url}/ui/jobs/{job['id']}",
    }, info.metadata
    assert info.runtime_env["env_vars"]["RAMP_RAY_RUN_NAME"] == run
    ray_runs = service.settings.layout.job_dir(job["id"]) / "ray"
    runs = {p.name for p in ray_runs.iterdir() if p.is_dir()}
    assert run in runs and "train" not in runs, runs


def test_cancelling_a_running_job_stops_it_on_ray(service: Any) -> None:
    long_job = tiny_train_spec(epochs=50, max_steps=None, train_n=256, eval_n=16)
    job_id = service.post("/v1/jobs", json=long_job).json()["id"]
    wait_status(service, job_id, {"running"}, 120)
    # Cancel once the driver is really training (not merely starting up).
    wait_for(lambda: any(e["data"].get("phase") == "train" and e["data"]["step"] > 0
                         for e in events(service, job_id, "progress")), 120, "training progress")
    pid = _driver_pid(service, job_id)
    started = time.monotonic()
    r = service.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelling"
    job = wait_status(service, job_id, {"cancelled", "failed", "succeeded"}, 60)
    assert job["status"] == "cancelled", job
    assert time.monotonic() - started < 30
    wait_for(lambda: _gone(pid), 15, f"driver pid {pid} to exit")
    from service.ray_backend import RayJobsBackend

    assert RayJobsBackend(service.head.dashboard_url).status(job["ray_job_id"]) == "STOPPED"
    assert service.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def _driver_pid(client: Any, job_id: int) -> int:
    first = next(e for e in events(client, job_id, "log") if "pid" in e["data"]["message"])
    return int(first["data"]["message"].rsplit("pid ", 1)[1])


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")

