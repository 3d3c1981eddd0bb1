"""Jobs survive the service: a restart while a job runs on a real Ray head, and an attempt killed
mid-training that is retried automatically and resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from exec_support import (
    events,
    live_service,
    ray_head,
    service_settings,
    tiny_train_spec,
    wait_for,
    wait_status,
)

from service.ray_local import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head() -> Iterator[Any]:
    with ray_head() as h:
        yield h


def test_a_job_running_across_a_service_restart_ends_recorded(
    head: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = service_settings(tmp_path_factory.mktemp("home"), head.dashboard_url, free_port())
    spec = tiny_train_spec(epochs=2, max_steps=None, train_n=192)
    with live_service(settings) as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        wait_for(lambda: events(client, job_id, "progress"), 120, "the driver to report progress")
    # The service is down; the driver keeps training and keeps its reports (retries + spool).
    time.sleep(3.0)
    with live_service(settings) as client:
        job = wait_status(client, job_id, {"succeeded", "failed", "cancelled"}, 180)
        assert job["status"] == "succeeded", job
        assert {"clean", "linf", "l2", "l1", "union"} <= set(job["metrics"])
        assert [h["epoch"] for h in client.get(f"/v1/jobs/{job_id}/metrics").json()["history"]] == [1, 2]
        reported = [e for e in events(client, job_id) if e["seq"] is not None]
        assert [e["seq"] for e in reported] == list(range(len(reported)))  # none lost, none twice
        # Some were emitted while the service was down and delivered after the restart.
        late = [e for e in reported
                if datetime.fromisoformat(e["created_at"]).timestamp() - e["data"]["ts"] > 1.0]
        assert late, "no event was delayed by the outage: the restart did not happen mid-run"


def test_a_killed_attempt_is_retried_and_resumes_from_its_checkpoint(
    head: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = service_settings(tmp_path_factory.mktemp("home"), head.dashboard_url, free_port())
    spec = tiny_train_spec(epochs=2, max_steps=None, train_n=320, max_retries=1)
    with live_service(settings) as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        def checkpointed() -> bool:
            return any(e["data"].get("kind") == "checkpoint" for e in events(client, job_id, "artifact"))

        wait_for(checkpointed, 120, "the first checkpoint")
        log = next(e for e in events(client, job_id, "log") if " pid " in e["data"]["message"])
        os.kill(int(log["data"]["message"].rsplit("pid ", 1)[1]), signal.SIGKILL)  # a crash, not a cancel
        job = wait_status(client, job_id, {"succeeded", "cancelled"}, 180)
        assert job["status"] == "succeeded", job
        assert job["attempt"] == 2
        transitions = [(e["data"]["from"], e["data"]["to"]) for e in events(client, job_id, "status")]
        assert ("running", "failed") in transitions and ("failed", "queued") in transitions
        second = [e["data"]["message"] for e in events(client, job_id, "log") if e["attempt"] == 2]
        assert any("resuming at epoch" in m for m in second), second
