"""The internal endpoints' fences, as a driver meets them: an ended job takes late events but no
status (409, nothing rewritten); a driver of a superseded attempt is refused -- 409 for a stale
``X-Ramp-Attempt``, 403 for the attempt's revoked token."""

from __future__ import annotations

from typing import Any

from exec_support import tiny_train_spec

from service.auth import tokens
from service.core.security import DRIVER_TOKEN_PREFIX, generate_token, hash_token
from service.events import store as events
from service.jobs import store, transitions


def _job(api: Any) -> tuple[int, str]:
    with api.sessions()() as s:
        job = store.create_job(s, tiny_train_spec(max_retries=1), kind="train", idempotency_key=None,
                               token_id=None)
        transitions.claim_queued_jobs(s, limit=1, claimer="test")
    token = generate_token(DRIVER_TOKEN_PREFIX)
    with api.sessions()() as s:
        assert transitions.set_driver_token(s, job.id, attempt=1, token_hash=hash_token(token))
    return job.id, token


def _headers(token: str, attempt: int | None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {token}"}
    if attempt is not None:
        h["X-Ramp-Attempt"] = str(attempt)
    return h


def _log(message: str, seq: int) -> dict[str, Any]:
    return {"events": [{"seq": seq, "type": "log", "data": {"message": message, "level": "info"}}]}


def test_an_ended_job_takes_late_events_but_no_status_report(api: Any) -> None:
    job_id, token = _job(api)
    h = _headers(token, 1)
    c = api.client
    assert c.post(f"/internal/jobs/{job_id}/status", json={"status": "running"}, headers=h).status_code == 200
    r = c.post(f"/internal/jobs/{job_id}/status", json={"status": "succeeded", "metrics": {"union": 0.5}},
               headers=h)
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    # A repeated or late verdict must not rewrite the recorded one.
    for body in ({"status": "succeeded", "metrics": {"union": 0.9}}, {"status": "failed", "error": "late"},
                 {"status": "running"}):
        r = c.post(f"/internal/jobs/{job_id}/status", json=body, headers=h)
        assert r.status_code == 409, r.text
        assert r.json()["refusal"] == "job_ended" and r.json()["status"] == "succeeded"
    with api.sessions()() as s:
        job = store.get_job(s, job_id)
        assert (job.status, job.result, job.error) == ("succeeded", {"union": 0.5}, None)
    # Late events (the driver's last log lines) still complete the job's log.
    assert c.post(f"/internal/jobs/{job_id}/events", json=_log("late line", 0), headers=h).status_code == 200
    with api.sessions()() as s:
        assert [e.data["message"] for e in events.list_events(s, job_id, type="log")] == ["late line"]


def test_a_superseded_attempt_is_refused(api: Any) -> None:
    job_id, old = _job(api)
    c = api.client
    with api.sessions()() as s:
        transitions.transition(s, job_id, "failed", error="boom")
        transitions.retry_job(s, job_id)
        transitions.claim_queued_jobs(s, limit=1, claimer="test")
    new = generate_token(DRIVER_TOKEN_PREFIX)
    with api.sessions()() as s:
        assert transitions.set_driver_token(s, job_id, attempt=2, token_hash=hash_token(new))
        assert not transitions.set_driver_token(s, job_id, attempt=1, token_hash=hash_token(old))
    # The old attempt's token is dead: 403 whatever attempt it claims.
    for attempt in (1, 2, None):
        r = c.get(f"/internal/jobs/{job_id}/spec", headers=_headers(old, attempt))
        assert r.status_code == 403, r.text
    # A valid token stating another attempt: 409 on every endpoint, nothing written.
    stale = _headers(new, 1)
    r = c.get(f"/internal/jobs/{job_id}/spec", headers=stale)
    assert r.status_code == 409 and r.json()["refusal"] == "stale_attempt" and r.json()["attempt"] == 2
    r = c.post(f"/internal/jobs/{job_id}/events", json=_log("stale", 0), headers=stale)
    assert r.status_code == 409 and r.json()["refusal"] == "stale_attempt"
    r = c.post(f"/internal/jobs/{job_id}/status", json={"status": "running"}, headers=stale)
    assert r.status_code == 409 and r.json()["refusal"] == "stale_attempt"
    with api.sessions()() as s:
        assert store.get_job(s, job_id).status == "dispatching"
        assert events.list_events(s, job_id, type="log") == []
    # The current attempt goes through; so does a driver that does not state its attempt.
    r = c.get(f"/internal/jobs/{job_id}/spec", headers=_headers(new, 2))
    assert r.status_code == 200 and r.json()["attempt"] == 2
    assert c.get(f"/internal/jobs/{job_id}/spec", headers=_headers(new, None)).status_code == 200
    r = c.post(f"/internal/jobs/{job_id}/status", json={"status": "running"}, headers=_headers(new, 2))
    assert r.status_code == 200 and r.json()["status"] == "running"


def test_a_requeued_attempt_refuses_running_without_calling_it_ended(api: Any) -> None:
    """A driver whose submit answer was lost may report 'running' while its job is back in the
    queue: 409, but not 'job_ended' -- it keeps running and the next claim adopts it."""
    job_id, token = _job(api)
    with api.sessions()() as s:
        transitions.transition(s, job_id, "queued", reason="submission did not reach Ray")
        assert tokens.verify_job_token(s, job_id, token), "requeued within the attempt: token kept"
    r = api.client.post(f"/internal/jobs/{job_id}/status", json={"status": "running"},
                        headers=_headers(token, 1))
    assert r.status_code == 409 and r.json()["refusal"] == "illegal_transition"
    assert r.json()["status"] == "queued"
