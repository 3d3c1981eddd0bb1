"""The plain curl scripts (scripts/curl/) against a live uvicorn server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from exec_support import tiny_train_spec

from service.events import store as events
from service.jobs import store, transitions

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "curl"


def run(script: str, *args: str, env: dict[str, str], stdin: str | None = None) -> Any:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def env(live_server: Any, tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RAMP_URL": live_server.url,
            "RAMP_TOKEN": live_server.token}


def test_submit_status_cancel(env: dict[str, str], tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_train_spec()))
    r = run("submit.sh", str(spec), "key-1", env=env)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["status"] == "queued" and job["spec"]["train_n"] == 64
    again = run("submit.sh", str(spec), "key-1", env=env)
    assert json.loads(again.stdout)["id"] == job["id"]  # idempotent
    piped = run("submit.sh", "-", env=env, stdin=json.dumps(tiny_train_spec(seed=5)))
    assert json.loads(piped.stdout)["id"] != job["id"]

    status = json.loads(run("status.sh", str(job["id"]), env=env).stdout)
    assert status["id"] == job["id"] and status["status"] == "queued"
    cancelled = json.loads(run("cancel.sh", str(job["id"]), env=env).stdout)
    assert cancelled["status"] == "cancelled"
    conflict = run("cancel.sh", str(job["id"]), env=env)
    assert conflict.returncode == 22 and "409" in conflict.stderr
    assert json.loads(conflict.stdout)["status"] == "cancelled"


def test_results_of_several_jobs(env: dict[str, str], live_server: Any) -> None:
    factory = live_server.app.state.session_factory
    ids = []
    for union in (0.25, 0.5):
        with factory() as s:
            job = store.create_job(s, tiny_train_spec(), kind="train", idempotency_key=None,
                                        token_id=None)
            transitions.claim_queued_jobs(s, limit=1, claimer="t")
            events.add_events(s, job.id, [{"seq": 0, "type": "metrics", "data": {"epoch": 1}}])
            metrics = {"clean": 0.9, "linf": 0.6, "l2": 0.7, "l1": 0.5, "union": union}
            transitions.transition(s, job.id, "succeeded", result=metrics)
        ids.append(job.id)
    r = run("results.sh", *map(str, ids), env=env)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [(x["job_id"], x["final"]["union"]) for x in lines] == [(ids[0], 0.25), (ids[1], 0.5)]
    assert lines[0]["history"][0]["epoch"] == 1


def test_errors_exit_non_zero_with_the_reason(env: dict[str, str], tmp_path: Path) -> None:
    missing = run("status.sh", "999", env=env)
    assert missing.returncode == 22 and "not found" in missing.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "train", "epochs": 0}))
    invalid = run("submit.sh", str(bad), env=env)
    assert invalid.returncode == 22 and "epochs" in invalid.stdout
    assert run("status.sh", env=env).returncode == 2  # usage
    no_token = {k: v for k, v in env.items() if k != "RAMP_TOKEN"}
    r = run("status.sh", "1", env=no_token)
    assert r.returncode == 2 and "RAMP_TOKEN" in r.stderr
    wrong = run("status.sh", "1", env=env | {"RAMP_TOKEN": "nope"})
    assert wrong.returncode == 22 and "invalid or revoked token" in wrong.stdout
