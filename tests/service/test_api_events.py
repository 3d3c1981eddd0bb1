"""Events: paging, server-sent events with ?follow=true, and Ray logs through the backend."""

from __future__ import annotations

import json
import threading
import time

import httpx

from service.events import store as events
from service.jobs import transitions

TRAIN = {"kind": "train", "epochs": 1}


def _events(api, job_id: int, n: int, start: int = 0) -> None:
    with api.sessions()() as s:
        events.add_events(
            s, job_id, [{"seq": i, "type": "progress", "data": {"step": i}} for i in range(start, start + n)]
        )


def test_event_pages_chain_with_next_after(api) -> None:
    job_id = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
    _events(api, job_id, 7)
    seen, after = [], None
    while True:
        params = {"limit": 3} | ({"after": after} if after is not None else {})
        page = api.client.get(f"/v1/jobs/{job_id}/events", params=params, headers=api.auth).json()
        seen += [e["data"]["step"] for e in page["events"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == list(range(7))
    r = api.client.get(f"/v1/jobs/{job_id}/events", params={"type": "metrics"}, headers=api.auth)
    assert r.json() == {"events": [], "next_after": None}


def _parse_sse(lines: list[str]) -> list[dict]:
    frames, cur = [], {}
    for line in lines:
        if not line:
            if cur:
                frames.append(cur)
            cur = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(": ")
            cur[key] = value
    return frames


def _driver(server, job_id: int, token: str) -> None:
    """A fake job driver: running, a few progress events over ~1 s, a metrics event, succeeded."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
        assert c.post(f"/internal/jobs/{job_id}/status", json={"status": "running"}).status_code == 200
        for i in range(4):
            time.sleep(0.25)
            body = {"events": [{"seq": i, "type": "progress", "data": {"step": i, "total_steps": 4}}]}
            assert c.post(f"/internal/jobs/{job_id}/events", json=body).status_code == 200
        body = {"events": [{"seq": 4, "type": "metrics", "data": {"epoch": 0, "loss": 0.5}}]}
        c.post(f"/internal/jobs/{job_id}/events", json=body)
        result = {"status": "succeeded", "metrics": {"clean": 0.9, "union": 0.5}}
        assert c.post(f"/internal/jobs/{job_id}/status", json=result).status_code == 200


def test_follow_streams_events_as_they_arrive_until_the_job_ends(live_server, driver_token) -> None:
    with httpx.Client(base_url=live_server.url, headers=live_server.auth, timeout=30) as c:
        job_id = c.post("/v1/jobs", json=TRAIN).json()["id"]
        with live_server.app.state.session_factory() as s:
            transitions.claim_queued_jobs(s, limit=1, claimer="t")
        token = driver_token(live_server.app, job_id)
        driver = threading.Thread(target=_driver, args=(live_server, job_id, token))
        lines, arrival = [], []
        started = time.monotonic()
        with c.stream("GET", f"/v1/jobs/{job_id}/events", params={"follow": "true"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            driver.start()
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith("event: progress"):
                    arrival.append(time.monotonic() - started)
        driver.join()
    frames = _parse_sse(lines)
    kinds = [f["event"] for f in frames]
    assert kinds[-1] == "end" and json.loads(frames[-1]["data"]) == {"status": "succeeded"}
    progress = [json.loads(f["data"])["data"]["step"] for f in frames if f["event"] == "progress"]
    assert progress == [0, 1, 2, 3]
    assert "metrics" in kinds and kinds.count("status") >= 2  # dispatching, running, succeeded
    ids = [int(f["id"]) for f in frames if "id" in f]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    # Streamed live, not buffered until the end: the progress events arrived spread over time.
    assert arrival[-1] - arrival[0] > 0.4


def test_follow_resumes_after_last_event_id_and_ends_for_finished_jobs(live_server) -> None:
    with httpx.Client(base_url=live_server.url, headers=live_server.auth, timeout=30) as c:
        job_id = c.post("/v1/jobs", json=TRAIN).json()["id"]
        with live_server.app.state.session_factory() as s:
            events.add_events(s, job_id, [{"seq": i, "type": "log", "data": {"i": i}} for i in range(5)])
            third = events.list_events(s, job_id)[2].id
        c.post(f"/v1/jobs/{job_id}/cancel")
        with c.stream("GET", f"/v1/jobs/{job_id}/events", params={"follow": "true"},
                      headers={"Last-Event-ID": str(third)}) as r:
            frames = _parse_sse(list(r.iter_lines()))
    logs = [json.loads(f["data"])["data"]["i"] for f in frames if f["event"] == "log"]
    assert logs == [3, 4]
    assert frames[-1]["event"] == "end" and json.loads(frames[-1]["data"])["status"] == "cancelled"
    with httpx.Client(base_url=live_server.url, headers=live_server.auth) as c:
        assert c.get("/v1/jobs/777/events", params={"follow": "true"}).status_code == 404



def test_a_last_event_id_that_is_not_a_number_follows_from_the_start(live_server) -> None:
    with httpx.Client(base_url=live_server.url, headers=live_server.auth, timeout=30) as c:
        job_id = c.post("/v1/jobs", json=TRAIN).json()["id"]
        with live_server.app.state.session_factory() as s:
            events.add_events(s, job_id, [{"seq": i, "type": "log", "data": {"i": i}} for i in range(3)])
        c.post(f"/v1/jobs/{job_id}/cancel")
        # "\u00b2" passes str.isdigit() but not int() (it was a 500)
        with c.stream("GET", f"/v1/jobs/{job_id}/events", params={"follow": "true"},
                      headers={"Last-Event-ID": "\u00b2".encode("latin-1")}) as r:
            assert r.status_code == 200
            frames = _parse_sse(list(r.iter_lines()))
    assert [json.loads(f["data"])["data"]["i"] for f in frames if f["event"] == "log"] == [0, 1, 2]


class FakeBackend:
    def __init__(self, logs: str | Exception = "line 1\nline 2\n", ping: object = True) -> None:
        self._logs, self._ping = logs, ping
        self.asked: list[str] = []

    def logs(self, ray_job_id: str) -> str:
        self.asked.append(ray_job_id)
        if isinstance(self._logs, Exception):
            raise self._logs
        return self._logs

    def ping(self) -> object:
        if isinstance(self._ping, Exception):
            raise self._ping
        return self._ping


def test_logs_come_from_the_ray_backend(api) -> None:
    job_id = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
    r = api.client.get(f"/v1/jobs/{job_id}/logs", headers=api.auth)
    assert r.status_code == 503 and "Ray backend" in r.json()["detail"]
    backend = FakeBackend()
    api.app.state.backend = backend
    r = api.client.get(f"/v1/jobs/{job_id}/logs", headers=api.auth)
    assert r.status_code == 404 and "no Ray job yet" in r.json()["detail"]
    with api.sessions()() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="t")
        transitions.transition(s, job_id, "running", ray_job_id="raysubmit_9")
    r = api.client.get(f"/v1/jobs/{job_id}/logs", headers=api.auth)
    assert r.status_code == 200 and r.text == "line 1\nline 2\n" and backend.asked == ["raysubmit_9"]
    api.app.state.backend = FakeBackend(logs=ConnectionError("dashboard down"))
    r = api.client.get(f"/v1/jobs/{job_id}/logs", headers=api.auth)
    assert r.status_code == 502 and "dashboard down" in r.json()["detail"]
