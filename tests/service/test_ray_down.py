"""Ray unreachable (issue 11): the Ray client fails fast and says why, submissions are accepted and
queue, /readyz answers at once with "degraded" and the reason, and once a Ray head answers at the
configured address the dispatcher connects and the queue drains to succeeded."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from service.ray_backend import RayJobsBackend, RayUnavailable
from service.ray_local import free_port

CALL_BOUND_S = 20.0  # a refused connection answers in well under a second; a hang never does


def _bounded(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a thread that must finish within CALL_BOUND_S (a hang fails, not blocks, the test)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # handed to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(CALL_BOUND_S)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} did not return within {CALL_BOUND_S} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_the_ray_client_fails_fast_and_says_why_while_ray_is_down() -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backend = RayJobsBackend(address)
    for _ in range(3):  # the first failed connect used to deadlock this call and every later one
        assert _bounded(backend.ping) is False
        assert address in (backend.last_ping_error or "") and "unreachable" in backend.last_ping_error
    with pytest.raises(RayUnavailable, match="unreachable"):
        _bounded(backend.info, "ramp-1-a1-x")
    with pytest.raises(RayUnavailable):
        _bounded(backend.logs, "ramp-1-a1-x")


@pytest.mark.slow
def test_jobs_queue_while_ray_is_down_and_drain_once_a_head_answers(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import shutil

    from exec_support import (
        events,
        live_service,
        service_settings,
        short_tmpdir,
        tiny_train_spec,
        wait_for,
        wait_status,
    )

    from service.ray_local import LocalRayHead

    dashboard_port = free_port()  # RAY_ADDRESS: nothing answers there until the head starts below
    address = f"http://127.0.0.1:{dashboard_port}"
    settings = service_settings(tmp_path_factory.mktemp("home"), address, free_port())
    specs = [tiny_train_spec(seed=seed) for seed in range(3)]  # more jobs than max_concurrent_jobs (2)
    with live_service(settings) as client:
        dispatcher = client.app.state.dispatcher
        ids = []
        for spec in specs:
            r = client.post("/v1/jobs", json=spec)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

        # The dispatcher tried Ray, found it down, put the claimed job back, and keeps passing.
        def queued_after_a_failed_try() -> bool:
            health = dispatcher.health()
            statuses = {client.get(f"/v1/jobs/{i}").json()["status"] for i in ids}
            return statuses == {"queued"} and "Ray unavailable" in (health["last_error"] or "")

        wait_for(queued_after_a_failed_try, 60, "the jobs to be queued after a failed submission")
        passes = dispatcher.health()["passes"]
        wait_for(lambda: dispatcher.health()["passes"] >= passes + 5, 60, "5 more dispatcher passes")
        assert {client.get(f"/v1/jobs/{i}").json()["status"] for i in ids} == {"queued"}

        # /readyz: fast, still ready (the API serves, jobs queue), degraded, and it says why.
        for _ in range(5):
            r = _bounded(client.get, "/readyz")
            assert r.elapsed.total_seconds() < 3.0, r.elapsed
            body = r.json()
            assert r.status_code == 200 and body["status"] == "degraded", body
            assert body["checks"] == {"database": "ok", "ray": "unreachable", "dispatcher": "ok"}, body
            assert any(address in reason and "queue until Ray answers again" in reason
                       for reason in body["reasons"]), body

        tmp = short_tmpdir("rampdown-")
        head = LocalRayHead(tmp_dir=tmp, num_cpus=2, dashboard_port=dashboard_port, auth_mode="disabled")
        try:
            head.start()  # returns once its Jobs API answers
            up = time.monotonic()
            jobs = [wait_status(client, i, {"succeeded", "failed", "cancelled"}, 600) for i in ids]
            drained_s = time.monotonic() - up
            assert [j["status"] for j in jobs] == ["succeeded"] * len(ids), jobs
            ready = client.get("/readyz").json()
            assert ready["status"] == "ok" and ready["reasons"] == [], ready
            for job in jobs:
                assert job["attempt"] == 1 and job["error"] is None, job  # an outage never fails a job
                assert {"clean", "linf", "l2", "l1", "union"} <= set(job["metrics"]), job
                moves = [(e["data"]["from"], e["data"]["to"]) for e in events(client, job["id"], "status")]
                assert moves[-3:] == [("queued", "dispatching"), ("dispatching", "running"),
                                      ("running", "succeeded")], moves
            requeued = [j["id"] for j in jobs if ("dispatching", "queued") in
                        [(e["data"]["from"], e["data"]["to"]) for e in events(client, j["id"], "status")]]
            assert requeued, "no job was claimed while Ray was down"
            print(f"\nRay down: {len(ids)} jobs queued ({len(requeued)} claimed and put back); the head "
                  f"answered and the queue drained (all succeeded) in {drained_s:.1f} s")
        finally:
            head.stop()
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_readyz_stays_fast_when_ray_accepts_connections_but_never_answers(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A hung Ray (a dashboard that accepts connections and never answers: each client call waits
    for its 15 s timeout) must not make /readyz or a submission wait for it."""
    import socket

    from exec_support import live_service, service_settings, tiny_train_spec

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes handshakes; nobody ever reads or answers
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = service_settings(tmp_path_factory.mktemp("home"), address, free_port())
        with live_service(settings) as client:
            r = client.post("/v1/jobs", json=tiny_train_spec())
            assert r.status_code == 201 and r.json()["status"] in ("queued", "dispatching"), r.text
            for _ in range(6):  # more than the probes' thread pool (4): abandoned probes must not pile up
                r = _bounded(client.get, "/readyz")
                body = r.json()
                assert r.elapsed.total_seconds() < 5.0, (r.elapsed, body)
                assert r.status_code == 200 and body["status"] == "degraded", body
                assert body["checks"]["ray"] == "unreachable" and body["checks"]["database"] == "ok", body
                assert any(reason.startswith("ray: ") for reason in body["reasons"]), body
