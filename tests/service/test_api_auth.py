"""Bearer tokens on /v1, per-job driver tokens on /internal, the embedded admin token."""

from __future__ import annotations

import json
import stat

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.auth import tokens
from service.core.security import generate_token
from service.jobs import transitions
from service.main import create_app
from workers.contract.spec import TrainSpec

TRAIN = {"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 20}
V1_ROUTES = [
    ("get", "/v1/jobs"), ("post", "/v1/jobs"), ("get", "/v1/jobs/1"), ("post", "/v1/jobs/1/cancel"),
    ("post", "/v1/jobs/1/retry"), ("get", "/v1/jobs/1/metrics"), ("get", "/v1/jobs/1/events"),
    ("get", "/v1/jobs/1/logs"), ("get", "/v1/jobs/1/artifacts"), ("get", "/v1/jobs/1/artifacts/x"),
]


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer", "bearer  ", "Token abc"]
)
def test_every_v1_route_requires_a_valid_bearer_token(
    api, method: str, path: str, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = getattr(api.client, method)(path, headers=headers)
    assert r.status_code == 401, (path, r.text)
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_open_endpoints_need_no_token(api) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert api.client.get(path).status_code == 200, path


def test_tokens_are_stored_hashed_and_revocation_takes_effect(api) -> None:
    plain = generate_token()
    with api.sessions()() as s:
        row = tokens.create_api_token(s, "alice", plain)
        dump = " ".join(str(r) for r in s.execute(text("SELECT * FROM api_tokens")).all())
    assert plain not in dump and api.token not in dump
    auth = {"Authorization": f"Bearer {plain}"}
    assert api.client.get("/v1/jobs", headers=auth).status_code == 200
    with api.sessions()() as s:
        tokens.revoke_api_token(s, row.id)
    assert api.client.get("/v1/jobs", headers=auth).status_code == 401


def test_idempotency_keys_are_scoped_per_token(api) -> None:
    other = generate_token()
    with api.sessions()() as s:
        tokens.create_api_token(s, "bob", other)
    a = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth | {"Idempotency-Key": "k"}).json()["id"]
    b = api.client.post(
        "/v1/jobs", json=TRAIN, headers={"Authorization": f"Bearer {other}", "Idempotency-Key": "k"}
    ).json()["id"]
    assert a != b


def _two_jobs(api) -> tuple[int, int]:
    a = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
    b = api.client.post("/v1/jobs", json=TRAIN | {"seed": 1}, headers=api.auth).json()["id"]
    return a, b


def test_driver_tokens_are_valid_for_their_own_job_only(api, driver_token) -> None:
    a, b = _two_jobs(api)
    token_a = driver_token(api.app, a)
    token_b = driver_token(api.app, b)
    auth_a = {"Authorization": f"Bearer {token_a}"}
    assert api.client.get(f"/internal/jobs/{a}/spec", headers=auth_a).status_code == 200
    for method, path, body in [
        ("get", f"/internal/jobs/{b}/spec", None),
        ("post", f"/internal/jobs/{b}/events", {"events": []}),
        ("post", f"/internal/jobs/{b}/status", {"status": "running"}),
    ]:
        kwargs = {"headers": auth_a} | ({"json": body} if body is not None else {})
        r = getattr(api.client, method)(path, **kwargs)
        assert r.status_code == 403 and f"job {b}" in r.json()["detail"], path
    # The admin API token is not a driver token either; a driver token is not an API token.
    assert api.client.get(f"/internal/jobs/{a}/spec", headers=api.auth).status_code == 403
    assert api.client.get("/v1/jobs", headers=auth_a).status_code == 401
    assert api.client.get(f"/internal/jobs/{a}/spec").status_code == 401
    # A job that does not exist is answered as an existing job the token is not for (no id oracle).
    missing = api.client.get("/internal/jobs/999/spec", headers=auth_a)
    assert missing.status_code == 403 and missing.json()["detail"] == "token is not valid for job 999"
    auth_b = {"Authorization": f"Bearer {token_b}"}
    assert api.client.get(f"/internal/jobs/{b}/spec", headers=auth_b).status_code == 200


def test_driver_spec_events_and_status_flow(api, driver_token) -> None:
    job_id = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
    auth = {"Authorization": f"Bearer {driver_token(api.app, job_id)}"}
    spec = api.client.get(f"/internal/jobs/{job_id}/spec", headers=auth).json()
    assert spec["attempt"] == 1 and spec["resume"] is False and spec["kind"] == "train"
    assert spec["job_dir"] == str(api.settings.job_dir(job_id))
    assert TrainSpec(**spec["work_spec"]).resolve().model_dump(mode="json") == spec["work_spec"]
    with api.sessions()() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="t")
    r = api.client.post(f"/internal/jobs/{job_id}/status", json={"status": "running"}, headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "running"
    events = {"events": [
        {"seq": 0, "type": "progress", "data": {"epoch": 0, "step": 5, "total_steps": 20}},
        {"seq": 1, "type": "metrics", "data": {"epoch": 0, "loss": 1.25, "loss_nan": float("nan")}},
    ]}
    # json.dumps writes NaN (a diverged loss); the service stores it as null instead of refusing.
    raw = json.dumps(events)
    hdrs = auth | {"Content-Type": "application/json"}
    r = api.client.post(f"/internal/jobs/{job_id}/events", content=raw, headers=hdrs)
    assert r.status_code == 200 and r.json()["received"] == 2
    api.client.post(f"/internal/jobs/{job_id}/events", content=raw, headers=hdrs)  # a re-sent batch
    metrics = {"clean": 0.98, "linf": 0.8, "l2": 0.7, "l1": 0.6, "union": 0.55}
    r = api.client.post(
        f"/internal/jobs/{job_id}/status", json={"status": "succeeded", "metrics": metrics}, headers=auth
    )
    assert r.status_code == 200
    job = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth).json()
    assert job["status"] == "succeeded" and job["metrics"] == metrics
    assert job["progress"] == {"epoch": 0, "step": 5, "total_steps": 20}
    assert job["timings"]["running_at"] <= job["timings"]["succeeded_at"]
    hist = api.client.get(f"/v1/jobs/{job_id}/metrics", headers=api.auth).json()
    assert hist["history"] == [{"attempt": 1, "epoch": 0, "loss": 1.25, "loss_nan": None}]
    assert hist["final"] == metrics
    # After success the state machine refuses further reports, naming the status.
    failed = {"status": "failed", "error": "x"}
    r = api.client.post(f"/internal/jobs/{job_id}/status", json=failed, headers=auth)
    assert r.status_code == 409 and r.json()["status"] == "succeeded"
    r = api.client.post(f"/internal/jobs/{job_id}/status", json={"status": "paused"}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.status"


def test_driver_failure_and_sanitised_text(api, driver_token) -> None:
    job_id = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
    auth = {"Authorization": f"Bearer {driver_token(api.app, job_id)}"}
    with api.sessions()() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="t")
    log_event = {"events": [{"seq": 0, "type": "log", "data": {"line": "bad\u0000byte \ud800"}}]}
    hdrs = auth | {"Content-Type": "application/json"}
    body = api.client.post(f"/internal/jobs/{job_id}/events", content=json.dumps(log_event), headers=hdrs)
    assert body.status_code == 200
    r = api.client.post(
        f"/internal/jobs/{job_id}/status", json={"status": "failed", "error": "CUDA OOM\u0000"}, headers=auth
    )
    assert r.status_code == 200
    job = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth).json()
    assert job["status"] == "failed" and job["error"].startswith("CUDA OOM") and "\x00" not in job["error"]
    page = api.client.get(f"/v1/jobs/{job_id}/events", params={"type": "log"}, headers=api.auth).json()
    [ev] = page["events"]
    assert ev["data"]["line"].startswith("bad") and "\x00" not in ev["data"]["line"]


def test_resume_hint_when_a_checkpoint_exists(api, driver_token) -> None:
    job_id = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
    (api.settings.job_dir(job_id) / "checkpoint").mkdir(parents=True)
    (api.settings.job_dir(job_id) / "checkpoint" / "train_state.pt").write_bytes(b"state")
    auth = {"Authorization": f"Bearer {driver_token(api.app, job_id)}"}
    assert api.client.get(f"/internal/jobs/{job_id}/spec", headers=auth).json()["resume"] is True


def test_embedded_admin_token_file_is_private_and_reused(api_settings) -> None:
    app = create_app(api_settings, start_dispatcher=False)
    with TestClient(app):
        pass
    path = api_settings.admin_token_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) > 40
    # A restart on a fresh database re-registers the same token from the file.
    fresh = api_settings.model_copy(update={"database_url": f"sqlite:///{path.parent / 'other.db'}"})
    with TestClient(create_app(fresh, start_dispatcher=False)) as client:
        assert path.read_text().strip() == token
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_configured_admin_token_is_registered(tmp_path) -> None:
    from service.core.config import Settings

    token = generate_token()
    settings = Settings(
        home=tmp_path, ray_address="ray://elsewhere:10001", admin_token=token, log_level="WARNING"
    )
    with TestClient(create_app(settings, start_dispatcher=False)) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert not settings.admin_token_file.exists()  # not embedded: nothing written to disk


@pytest.mark.parametrize("method,route,body", [
    ("get", "/internal/jobs/{id}/spec", None),
    ("post", "/internal/jobs/{id}/events", {"events": []}),
    ("post", "/internal/jobs/{id}/status", {"status": "running"}),
])
def test_a_garbage_driver_token_cannot_tell_existing_jobs_from_missing_ones(
    api, method: str, route: str, body: dict | None
) -> None:
    """Issue 19 (8): with a token that is valid for no job, an existing job and a missing one get
    the same status and the same body shape, so the internal routes are no job-id oracle."""
    existing, _ = _two_jobs(api)
    garbage = {"Authorization": "Bearer rampjob_garbage"}
    answers = []
    for job_id in (existing, 987_654, 2**62):
        kwargs = {"headers": garbage} | ({"json": body} if body is not None else {})
        r = getattr(api.client, method)(route.format(id=job_id), **kwargs)
        answers.append((r.status_code, r.json()["detail"].replace(str(job_id), "N")))
    assert answers == [(403, "token is not valid for job N")] * 3
