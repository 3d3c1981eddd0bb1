"""``rampctl.client`` against a scripted local HTTP server (real sockets, one thread per connection):
following a job's server-sent events across dropped streams with ``Last-Event-ID``, one-line
errors; and ``rampctl.settings`` (the environment variables and their defaults)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rampctl.client import ServiceClient, ServiceError
from rampctl.main import app
from rampctl.settings import CliSettings

Action = Callable[[BaseHTTPRequestHandler], None]
JOB = {"id": 7, "kind": "train", "status": "succeeded", "attempt": 1, "max_retries": 0,
       "spec": {"method": "ramp", "dataset": "mnist-5k"}, "progress": {"fraction": 1.0}, "metrics": None}


def frame(event_id: int | None, etype: str, data: dict[str, Any]) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {etype}\ndata: {json.dumps(data)}\n\n".encode()


def event(event_id: int, etype: str, **data: Any) -> bytes:
    """A stored event as the service streams it: ``{"id", "type", "data"}``."""
    return frame(event_id, etype, {"id": event_id, "type": etype, "data": data})


END = frame(None, "end", {"status": "succeeded"})


def stream(*chunks: bytes, then: str = "end") -> Action:
    """A 200 event stream of ``chunks``; ``then``: "end" (a complete body), or "drop" (the socket
    closes mid-body, as when the service dies: a transport error for the client)."""

    def act(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for chunk in chunks:
            h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            h.wfile.flush()
        if then == "drop":
            h.wfile.write(b"40\r\ndata: cut sho")
            h.close_connection = True
        else:
            h.wfile.write(b"0\r\n\r\n")

    return act


def reply(status: int, body: Any, content_type: str = "application/json") -> Action:
    def act(h: BaseHTTPRequestHandler) -> None:
        raw = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    return act


class Scripted(ThreadingHTTPServer):
    """Answers each request to ``/v1/jobs/7/events`` with the next scripted action, and
    ``/v1/jobs/7`` with ``JOB``; records what every request carried."""

    daemon_threads = True

    def __init__(self, actions: list[Action]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.actions = actions
        self.seen: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Scripted

    def do_GET(self) -> None:  # noqa: N802
        path, _, query = self.path.partition("?")
        self.server.seen.append({"path": path, "query": query, "auth": self.headers.get("Authorization"),
                                 "last_event_id": self.headers.get("Last-Event-ID")})
        if path == "/v1/jobs/7/events" and self.server.actions:
            self.server.actions.pop(0)(self)
        elif path == "/v1/jobs/7":
            reply(200, JOB)(self)
        else:
            reply(404, {"detail": f"no route {path}"})(self)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def start(*actions: Action) -> Scripted:
        server = Scripted(list(actions))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def client_for(server: Scripted, **settings: Any) -> ServiceClient:
    return ServiceClient(CliSettings(url=server.url + "/", token="tok", reconnect_delay_s=0, **settings))


def test_follow_resumes_after_dropped_streams_from_the_last_event_id(scripted: Any) -> None:
    server = scripted(
        stream(b": keep-alive\n\n", event(1, "status", **{"from": "queued", "to": "running"}),
               event(2, "progress", step=1, total_steps=4, fraction=0.25), then="drop"),
        stream(event(3, "log", message="careful", level="warning")),  # closed cleanly, no "end"
        stream(event(4, "progress", step=4, total_steps=4, fraction=1.0), END),
    )
    with client_for(server) as client:
        got = list(client.follow(7))
    assert [(t, p.get("id")) for t, p in got] == [
        ("status", 1), ("progress", 2), ("log", 3), ("progress", 4), ("end", None)]
    assert got[2].payload["data"] == {"message": "careful", "level": "warning"}
    assert got[-1].payload == {"status": "succeeded"}
    assert [s["last_event_id"] for s in server.seen] == [None, "2", "3"]
    assert all(s["query"] == "follow=true" and s["auth"] == "Bearer tok" for s in server.seen)


def test_follow_gives_up_after_the_reconnect_budget_of_failures_in_a_row(scripted: Any) -> None:
    # An event resets the count: 2 attempts allowed, so the 3rd drop in a row without one ends it.
    server = scripted(stream(event(5, "log", message="a"), then="drop"), stream(then="drop"),
                      stream(event(6, "log", message="b"), then="drop"), stream(then="drop"),
                      stream(then="drop"), stream(END))
    with client_for(server, reconnect_attempts=2) as client:
        seen: list[int] = []
        with pytest.raises(ServiceError, match="^lost the event stream from http://127.0.0.1:.*RemoteProtocol"):
            for _, payload in client.follow(7, after=4):
                seen.append(payload["id"])
    assert seen == [5, 6]
    assert [s["last_event_id"] for s in server.seen] == ["4", "5", "5", "6", "6"]


def test_follow_errors_are_one_line_and_not_retried(scripted: Any) -> None:
    server = scripted(reply(404, {"detail": "job 7 not found"}),
                      reply(200, "<html>a proxy page</html>", "text/html"),
                      stream(b"event: progress\ndata: {not json\n\n"))
    with client_for(server) as client:
        with pytest.raises(ServiceError, match=r"^HTTP 404: job 7 not found$"):
            list(client.follow(7))
        with pytest.raises(ServiceError, match="did not answer with an event stream.*text/html"):
            list(client.follow(7))
        with pytest.raises(ServiceError, match="malformed 'progress' event"):
            list(client.follow(7))
    assert len(server.seen) == 3


def test_status_follow_prints_each_event_once_across_a_drop(scripted: Any) -> None:
    server = scripted(
        stream(event(1, "metrics", epoch=1, epochs=2, losses={"ce": 1.5}), then="drop"),
        stream(event(2, "metrics", epoch=2, epochs=2, losses={"ce": 0.75}),
               event(3, "status", **{"from": "running", "to": "succeeded"}), END),
    )
    env = {"RAMP_URL": server.url, "RAMP_TOKEN": "tok", "RAMP_RECONNECT_DELAY_S": "0", "COLUMNS": "200"}
    r = CliRunner().invoke(app, ["status", "7", "--follow"], env=env)
    assert r.exit_code == 0, r.output
    assert r.output.count("epoch 1/2: ce=1.5") == 1 and r.output.count("epoch 2/2: ce=0.75") == 1
    assert "running -> succeeded" in r.output and "job 7" in r.output and "succeeded" in r.output
    assert [s["last_event_id"] for s in server.seen if s["path"].endswith("/events")] == [None, "1"]


def test_status_follow_prints_the_gradient_cosine_of_a_gradient_projected_epoch(scripted: Any) -> None:
    server = scripted(stream(
        event(1, "metrics", epoch=1, epochs=2, losses={"ce": 1.5}, grad_cosine=0.25, grad_angle_deg=75.52),
        event(2, "metrics", epoch=2, epochs=2, losses={"ce": 0.75}, grad_cosine=None, grad_angle_deg=None),
        event(3, "status", **{"from": "running", "to": "succeeded"}), END))
    env = {"RAMP_URL": server.url, "RAMP_TOKEN": "tok", "RAMP_RECONNECT_DELAY_S": "0", "COLUMNS": "200"}
    r = CliRunner().invoke(app, ["status", "7", "--follow"], env=env)
    assert r.exit_code == 0, r.output
    assert "epoch 1/2: ce=1.5 cos(nat, adv) +0.250 (76 deg)" in r.output
    assert r.output.count("cos(nat, adv)") == 1  # epoch 2 ran without gradient projection


def test_http_errors_are_one_line(scripted: Any) -> None:
    server = scripted()
    with client_for(server) as client:
        with pytest.raises(ServiceError, match=r"^HTTP 404: no route /v1/nope$"):
            client.get("/v1/nope")
        assert client.job(7)["status"] == "succeeded"
    r = CliRunner().invoke(app, ["logs", "8"], env={"RAMP_URL": server.url, "RAMP_TOKEN": "tok"})
    assert r.exit_code == 1 and "error: HTTP 404: no route /v1/jobs/8/logs" in r.output
    assert "Traceback" not in r.output


# ------------------------------------------------------------------------------------ settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("RAMP_URL", "RAMP_TOKEN", "RAMP_HOME", "RAMP_ADMIN_TOKEN_FILE", "RAMP_REQUEST_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_settings_defaults_and_the_admin_token_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = CliSettings()
    assert s.base_url == "http://127.0.0.1:8000" and s.request_timeout_s == 30.0
    assert s.admin_token_path == clean_env / ".ramp" / "admin_token" and s.bearer_token() is None
    (clean_env / ".ramp").mkdir()
    (clean_env / ".ramp" / "admin_token").write_text("ramp_home_default\n")
    assert CliSettings().bearer_token() == "ramp_home_default"

    home = clean_env / "elsewhere"
    home.mkdir()
    (home / "admin_token").write_text("ramp_from_home")
    monkeypatch.setenv("RAMP_HOME", str(home))
    assert CliSettings().bearer_token() == "ramp_from_home"
    (clean_env / "tok").write_text("ramp_from_file")
    monkeypatch.setenv("RAMP_ADMIN_TOKEN_FILE", str(clean_env / "tok"))
    assert CliSettings().bearer_token() == "ramp_from_file"
    monkeypatch.setenv("RAMP_TOKEN", "")  # empty: unset, as before
    assert CliSettings().bearer_token() == "ramp_from_file"
    monkeypatch.setenv("RAMP_TOKEN", "ramp_env")
    monkeypatch.setenv("RAMP_URL", "http://svc:9000/")
    s = CliSettings()
    assert s.bearer_token() == "ramp_env" and s.base_url == "http://svc:9000"
    assert "ramp_env" not in repr(s)


def test_invalid_settings_are_one_line(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMP_REQUEST_TIMEOUT_S", "0")
    r = CliRunner().invoke(app, ["jobs"])
    assert r.exit_code == 1 and "invalid settings: RAMP_REQUEST_TIMEOUT_S" in r.output
    assert "Traceback" not in r.output


def test_reconnect_waits_grow_to_a_cap() -> None:
    # The project's one retry policy; rand = 0.5 is the middle of its jitter band.
    policy = CliSettings(reconnect_delay_s=0.5, reconnect_max_delay_s=5.0).reconnect_policy()
    assert [policy.delay(n, 0.5) for n in (0, 1, 2, 3, 4, 9, 29)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert all(0.4 <= policy.delay(0, r) <= 0.6 for r in (0.0, 0.99))
    assert CliSettings(reconnect_delay_s=0).reconnect_policy() is None  # reopen at once


def test_follow_waits_by_the_retry_policy_between_reopenings(scripted: Any) -> None:
    server = scripted(stream(event(1, "log", message="a"), then="drop"), stream(then="drop"),
                      stream(event(2, "log", message="b"), END))
    settings = {"reconnect_delay_s": 0.2, "reconnect_max_delay_s": 0.3}
    started = time.monotonic()
    with ServiceClient(CliSettings(url=server.url, token="tok", **settings)) as client:
        got = [payload.get("id") for _, payload in client.follow(7)]
    assert got == [1, 2, None]
    assert time.monotonic() - started >= 0.16 + 0.24  # two waits: ~0.2 s, then ~0.3 s (the cap)
    assert [s["last_event_id"] for s in server.seen] == [None, "1", "1"]
