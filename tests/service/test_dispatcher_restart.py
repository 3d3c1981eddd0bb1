"""Jobs survive the service: a restart while a job runs on a real Ray head, and an attempt killed
mid-training that is retried automatically and resumes from its checkpoint to the weights of an
uninterrupted run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from exec_support import (
    checkpoint_state,
    events,
    live_service,
    ray_head,
    service_settings,
    state_diffs,
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
    """The driver is SIGKILLed (a crash, not a cancel) after the first epoch's checkpoint: the job is
    retried (max_retries) and the next attempt resumes from that checkpoint -- to the very weights
    of an uninterrupted run of the same spec, bit for bit (same data order, RNG streams, optimiser and
    method state; both runs on the same Ray Train path, one CPU thread per worker)."""
    import torch

    settings = service_settings(tmp_path_factory.mktemp("home"), head.dashboard_url, free_port())
    epochs = 3  # killed after epoch 1: at least one whole epoch is left for the resumed attempt
    spec = tiny_train_spec(epochs=epochs, max_steps=None, train_n=320, max_retries=1)
    with live_service(settings) as client:
        killed, reference = (client.post("/v1/jobs", json=spec).json()["id"] for _ in range(2))

        def checkpointed() -> bool:
            return any(e["data"].get("kind") == "checkpoint" for e in events(client, killed, "artifact"))

        wait_for(checkpointed, 180, "the first checkpoint")
        log = next(e for e in events(client, killed, "log") if " pid " in e["data"]["message"])
        os.kill(int(log["data"]["message"].rsplit("pid ", 1)[1]), signal.SIGKILL)  # a crash, not a cancel
        job = wait_status(client, killed, {"succeeded", "cancelled"}, 300)
        assert job["status"] == "succeeded", job
        assert job["attempt"] == 2
        transitions = [(e["data"]["from"], e["data"]["to"]) for e in events(client, killed, "status")]
        assert ("running", "failed") in transitions and ("failed", "queued") in transitions
        second = [e["data"]["message"] for e in events(client, killed, "log") if e["attempt"] == 2]
        resumed = [m for m in second if "resuming at epoch" in m]
        assert resumed, second
        start_epoch = int(resumed[0].split("resuming at epoch ", 1)[1].split()[0])
        assert 1 <= start_epoch < epochs, f"attempt 2 trained nothing: {resumed[0]}"
        ref = wait_status(client, reference, {"succeeded", "failed", "cancelled"}, 300)
        assert ref["status"] == "succeeded" and ref["attempt"] == 1, ref

    # The resumed run's final checkpoint is the uninterrupted run's, exactly.
    a, b = checkpoint_state(settings.job_dir(killed)), checkpoint_state(settings.job_dir(reference))
    assert a["progress"] == b["progress"] == (epochs, epochs * 10)
    diffs = state_diffs(a, b)
    unequal = {k: d for k, d in diffs.items() if d != 0.0}
    tensors = sum(1 for k in diffs if k.startswith("model."))
    max_diff = max(d for k, d in diffs.items() if k.startswith("model."))
    print(f"\ndriver killed, attempt 2 resumed at epoch {start_epoch} of {epochs}: {tensors} weight tensors, "
          f"max abs diff {max_diff!r} to the uninterrupted run; optimiser+method state equal: {not unequal}")
    assert not unequal, f"the resumed run differs from the uninterrupted one: {unequal}"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    metrics = ("clean", "linf", "l2", "l1", "union")
    assert {k: job["metrics"][k] for k in metrics} == {k: ref["metrics"][k] for k in metrics}
