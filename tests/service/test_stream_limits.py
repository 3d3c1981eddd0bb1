"""Issue 19 (2): open event streams (``GET /v1/jobs/{id}/events?follow=true``) are bounded.

- A revoked or expired token's open streams end within ``RAMP_STREAM_AUTH_RECHECK_S +
  RAMP_SSE_POLL_INTERVAL_S`` seconds (5.5 s by default), with a last ``unauthorized`` event saying
  why -- checked exactly on a fake clock, and end to end on a live server with a condition-based
  wait (the machine may be loaded: the live tests allow generous slack over the bound).
- At most ``RAMP_MAX_STREAMS_PER_TOKEN`` streams per token (beyond: 429) and ``RAMP_MAX_STREAMS``
  per process (beyond: 503), both with ``Retry-After``; a closed stream gives its slot back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.auth import tokens
from service.core.config import Settings
from service.core.security import generate_token
from service.db.base import utcnow

TRAIN = {"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 20}
WAIT_S = 60.0  # any one condition-based wait (a loaded 2-core machine)
SLACK_S = 20.0  # what a loaded machine may add to the bound in the live tests


def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.05)


class Follower(threading.Thread):
    """Reads one job's event stream in the background: each frame's (event, data) and when it
    ended."""

    def __init__(self, url: str, token: str, job_id: int) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.job_id = url, token, job_id
        self.status: int | None = None
        self.frames: list[tuple[str, str]] = []
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self._client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                    timeout=httpx.Timeout(30, read=None))
        self._response: httpx.Response | None = None

    def run(self) -> None:
        try:
            with self._client.stream("GET", f"/v1/jobs/{self.job_id}/events", params={"follow": "true"}) as r:
                self._response = r
                self.status = r.status_code
                frame: dict[str, str] = {}
                for line in r.iter_lines():
                    if not line:
                        if "event" in frame:
                            self.frames.append((frame["event"], frame.get("data", "")))
                        frame = {}
                    elif not line.startswith(":"):
                        key, _, value = line.partition(": ")
                        frame[key] = value
        except (httpx.HTTPError, RuntimeError) as exc:  # closed from our side
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def close(self) -> None:
        """Hang up, as a client that goes away does: shut the socket down (closing the response
        from this thread would wait for the reading thread's next chunk, a keep-alive 15 s away)."""
        stream = self._response.extensions.get("network_stream") if self._response is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.join(timeout=WAIT_S)
        self._client.close()

    @property
    def done(self) -> bool:
        return self.ended_at is not None


def _settings(live: Any, **changes: Any) -> Settings:
    live.app.state.settings = live.app.state.settings.model_copy(update=changes)
    return live.app.state.settings


def _token(live: Any, name: str, **kwargs: Any) -> tuple[str, int]:
    plain = generate_token()
    with live.app.state.session_factory() as s:
        return plain, tokens.create_api_token(s, name, plain, **kwargs).id


def _submit(live: Any, token: str) -> int:
    r = httpx.post(f"{live.url}/v1/jobs", json=TRAIN, headers={"Authorization": f"Bearer {token}"},
                   timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _follow(live: Any, token: str, job_id: int) -> Follower:
    follower = Follower(live.url, token, job_id)
    follower.start()
    wait_for(lambda: follower.status is not None or follower.done, what="the stream to open")
    return follower


# ------------------------------------------------------------------- the bound, on a fake clock


def test_the_stream_ends_at_the_first_recheck_after_revocation_even_while_events_flow() -> None:
    """``_stream`` on a fake clock: a busy job (a new event at every poll, so the loop never
    sleeps) whose token is revoked at t=1.0 with recheck every 0.5: the stream re-checks on time
    and ends with ``unauthorized`` by t=1.5 plus one poll, having sent nothing after that."""
    from service.api.routes.events import _stream
    from service.api.schemas import EventOut
    from service.events.streams import TokenRecheck

    now = [0.0]
    revoked_at = 1.0
    step = 0.1  # each poll of the database takes 0.1 s of the fake clock

    def page(after: int | None) -> tuple[list[EventOut], str]:
        now[0] += step
        n = (after or 0) + 1
        return [EventOut(id=n, attempt=1, seq=n, type="progress", data={"step": n}, created_at=utcnow())], \
            "running"

    def verify() -> None:
        if now[0] >= revoked_at:
            raise tokens.TokenRejected("token revoked")

    recheck = TokenRecheck(verify, 0.5, clock=lambda: now[0])

    async def drain() -> list[tuple[str, float]]:
        seen = []
        async for ev in _stream(page, [], None, 0.01, recheck):
            seen.append((ev.event, now[0]))
        return seen

    seen = asyncio.run(drain())
    assert seen[-1][0] == "unauthorized" and all(e == "progress" for e, _ in seen[:-1])
    assert seen[-1][1] <= revoked_at + 0.5 + step + 1e-9
    assert len(seen) > 5  # events flowed up to then


# ------------------------------------------------------------------ revocation, end to end


def test_a_revoked_token_s_open_stream_ends_within_the_bound(live_server) -> None:
    settings = _settings(live_server, stream_auth_recheck_s=1.0)
    bound = settings.stream_auth_recheck_s + settings.sse_poll_interval_s
    plain, token_id = _token(live_server, "carol")
    job_id = _submit(live_server, plain)
    follower = _follow(live_server, plain, job_id)
    assert follower.status == 200
    try:
        with live_server.app.state.session_factory() as s:
            tokens.revoke_api_token(s, token_id)
        revoked = time.monotonic()
        wait_for(lambda: follower.done, what="the revoked token's stream to end")
        assert follower.ended_at is not None and follower.ended_at - revoked <= bound + SLACK_S
        event, data = follower.frames[-1]
        assert event == "unauthorized" and json.loads(data) == {"detail": "token revoked"}
        # What the stream of the issue delivered after `rampctl token revoke`: nothing any more.
        admin = {"Authorization": f"Bearer {live_server.token}"}
        assert httpx.post(f"{live_server.url}/v1/jobs/{job_id}/cancel", headers=admin).status_code == 200
        assert not any(json.loads(d).get("data", {}).get("to") == "cancelled"
                       for e, d in follower.frames if e == "status")
    finally:
        follower.close()
    gate = live_server.app.state.stream_gate
    wait_for(lambda: gate.open_streams() == 0, what="the stream's slot to be given back")


def test_an_expired_token_s_open_stream_ends_within_the_bound(live_server) -> None:
    settings = _settings(live_server, stream_auth_recheck_s=1.0)
    bound = settings.stream_auth_recheck_s + settings.sse_poll_interval_s
    expires_in = 3.0
    plain, _ = _token(live_server, "dora", expires_at=utcnow() + timedelta(seconds=expires_in))
    job_id = _submit(live_server, plain)
    opened = time.monotonic()
    follower = _follow(live_server, plain, job_id)
    try:
        assert follower.status == 200
        wait_for(lambda: follower.done, what="the expired token's stream to end")
        assert follower.ended_at is not None and follower.ended_at - opened <= expires_in + bound + SLACK_S
        assert follower.frames[-1] == ("unauthorized", json.dumps({"detail": "token expired"}))
    finally:
        follower.close()


# -------------------------------------------------------------------------------------- caps


def test_streams_are_capped_per_token_and_per_process(live_server) -> None:
    _settings(live_server, max_streams_per_token=2, max_streams=3, retry_after_s=7)
    users = {name: _token(live_server, name) for name in ("ann", "ben", "cid")}
    jobs = {name: _submit(live_server, plain) for name, (plain, _) in users.items()}
    followers: list[Follower] = []
    try:
        ann, ann_id = users["ann"]
        followers += [_follow(live_server, ann, jobs["ann"]) for _ in range(2)]
        assert [f.status for f in followers] == [200, 200]
        third = _follow(live_server, ann, jobs["ann"])
        third.join(timeout=WAIT_S)
        assert third.status == 429
        gate = live_server.app.state.stream_gate  # made from the settings by the first stream
        assert gate.open_streams(ann_id) == 2
        r = httpx.get(f"{live_server.url}/v1/jobs/{jobs['ann']}/events", params={"follow": "true"},
                      headers={"Authorization": f"Bearer {ann}"}, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "7" and "at most 2" in r.json()["detail"]

        ben, _ = users["ben"]
        followers.append(_follow(live_server, ben, jobs["ben"]))
        assert followers[-1].status == 200 and gate.open_streams() == 3
        cid, _ = users["cid"]
        r = httpx.get(f"{live_server.url}/v1/jobs/{jobs['cid']}/events", params={"follow": "true"},
                      headers={"Authorization": f"Bearer {cid}"}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert "maximum of 3" in r.json()["detail"]
        # A page of events (no follow) is no stream: never refused by the caps.
        assert httpx.get(f"{live_server.url}/v1/jobs/{jobs['cid']}/events",
                         headers={"Authorization": f"Bearer {cid}"}, timeout=30).status_code == 200

        followers[0].close()  # one of ann's streams goes away: its slot comes back
        wait_for(lambda: gate.open_streams(ann_id) == 1, what="the closed stream's slot")
        followers.append(_follow(live_server, ann, jobs["ann"]))
        assert followers[-1].status == 200
    finally:
        for f in followers:
            f.close()
    wait_for(lambda: gate.open_streams() == 0, what="every slot to be given back")


def test_the_stream_settings_and_their_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def stream_settings() -> tuple[int, int, float]:
        s = Settings(home=tmp_path)
        return s.max_streams_per_token, s.max_streams, s.stream_auth_recheck_s

    assert stream_settings() == (10, 100, 5.0)
    monkeypatch.setenv("RAMP_MAX_STREAMS_PER_TOKEN", "3")
    monkeypatch.setenv("RAMP_MAX_STREAMS", "40")
    monkeypatch.setenv("RAMP_STREAM_AUTH_RECHECK_S", "2")
    assert stream_settings() == (3, 40, 2.0)
    monkeypatch.setenv("RAMP_MAX_STREAMS", "0")
    with pytest.raises(ValueError, match="max_streams"):
        Settings(home=tmp_path)
