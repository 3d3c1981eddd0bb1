"""Issue 19 (9): every answer that carries one owner's data -- artifact downloads on ``/v1`` and
``/ui``, the pages' JSON and the driver log included -- is ``X-Content-Type-Options: nosniff`` and
``Cache-Control: no-store`` (a download's ``ETag`` / ``Last-Modified`` must not let a shared
proxy keep another user's checkpoint); static assets are ``nosniff`` and may be cached."""

from __future__ import annotations

from typing import Any

import pytest

TRAIN = {"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 20}


class FakeBackend:
    def logs(self, ray_job_id: str) -> str:
        return f"log of {ray_job_id}\n"


def _private(r: Any) -> None:
    assert r.headers.get("x-content-type-options") == "nosniff", r.request.url
    assert r.headers.get("cache-control") == "no-store", (r.request.url, r.headers.get("cache-control"))


@pytest.fixture
def job(api) -> int:
    from service.jobs import transitions

    job_id = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
    job_dir = api.settings.job_dir(job_id)
    (job_dir / "checkpoint").mkdir(parents=True)
    (job_dir / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    with api.sessions()() as s:
        transitions.transition(s, job_id, "dispatching")
        transitions.transition(s, job_id, "running", ray_job_id=f"ramp-{job_id}-1")
    api.app.state.backend = FakeBackend()
    return job_id


def test_artifact_downloads_are_not_sniffed_nor_stored(api, job: int) -> None:
    for url in (f"/v1/jobs/{job}/artifacts/checkpoint/model.safetensors",
                f"/ui/jobs/{job}/artifacts/checkpoint/model.safetensors"):
        r = api.client.get(url, headers=api.auth)
        assert r.status_code == 200 and r.content == b"weights"
        _private(r)


def test_the_pages_json_and_the_driver_log_are_not_sniffed_nor_stored(api, job: int) -> None:
    for url in (f"/ui/api/jobs/{job}", f"/ui/jobs/{job}/log", "/ui/fragments/jobs"):
        r = api.client.get(url, headers=api.auth)
        assert r.status_code == 200, url
        _private(r)


def test_every_api_answer_is_private_errors_included(api, job: int) -> None:
    for url in ("/v1/jobs", f"/v1/jobs/{job}", f"/v1/jobs/{job}/events", f"/v1/jobs/{job}/artifacts",
                "/v1/jobs/987654", f"/v1/jobs/{job}/artifacts/nope"):
        _private(api.client.get(url, headers=api.auth))
    _private(api.client.get("/v1/jobs"))  # a 401
    big = api.client.post("/v1/jobs", content=b"x" * (api.settings.max_body_bytes + 1), headers=api.auth)
    assert big.status_code == 413
    _private(big)


def test_the_event_stream_is_not_stored_either(live_server) -> None:
    import httpx

    with httpx.Client(base_url=live_server.url, headers=live_server.auth, timeout=30) as client:
        job_id = client.post("/v1/jobs", json=TRAIN).json()["id"]
        client.post(f"/v1/jobs/{job_id}/cancel")  # terminal: the stream ends by itself
        with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"follow": "true"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            _private(r)
            r.read()


def test_static_assets_are_not_sniffed_and_may_be_cached(api) -> None:
    r = api.client.get("/ui/static/ui.js")
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    assert "no-store" not in r.headers.get("cache-control", "")
