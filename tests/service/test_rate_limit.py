"""Per-token rate limit on /v1 (RAMP_RATE_LIMIT_PER_MINUTE): a token bucket per API token, 429 with
``Retry-After`` when empty; other tokens, the drivers' /internal routes and the health endpoints
are not limited by it. The clock is injected: nothing here races the wall clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.auth import tokens
from service.auth.ratelimit import RateLimiter, limiter_for
from service.core.config import Settings
from service.core.security import generate_token
from service.main import create_app

TRAIN = {"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 20}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(home: Path, per_minute: int) -> Settings:
    return Settings(home=home, database_url=f"sqlite:///{home / 'ramp.db'}", ray_address=None,
                    log_level="WARNING", rate_limit_per_minute=per_minute)


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[TestClient, Any, FakeClock, dict[str, str]]]:
    """An app allowing 2 requests a minute per token, on a fake clock; the admin's auth header."""
    settings = _settings(tmp_path / "home", 2)
    app = create_app(settings, start_dispatcher=False)
    clock = FakeClock()
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, clock=clock)
    with TestClient(app) as client:
        assert settings.admin_token_file is not None
        auth = {"Authorization": f"Bearer {settings.admin_token_file.read_text().strip()}"}
        yield client, app, clock, auth


# --------------------------------------------------------------------------------- the bucket


def test_the_bucket_allows_a_burst_then_refills_evenly() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, clock=clock)  # 3 at once, then one every 20 s
    assert [limiter.acquire(1) for _ in range(3)] == [None, None, None]
    assert limiter.acquire(1) == 20
    clock.now += 19.5
    assert limiter.acquire(1) == 1  # half a second short: still refused, rounded up to a whole second
    clock.now += 0.5
    assert limiter.acquire(1) is None
    assert limiter.acquire(2) is None  # another key has its own bucket
    clock.now += 3600
    assert [limiter.acquire(1) for _ in range(4)] == [None, None, None, 20]  # never more than the burst


def test_zero_disables_and_an_injected_limiter_wins() -> None:
    class State:
        pass

    state = State()
    assert limiter_for(state, 0) is None
    made = limiter_for(state, 5)
    assert isinstance(made, RateLimiter) and limiter_for(state, 5) is made  # created once, then reused
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)


def test_the_setting_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings(home=tmp_path).rate_limit_per_minute == 600
    monkeypatch.setenv("RAMP_RATE_LIMIT_PER_MINUTE", "0")
    assert Settings(home=tmp_path).rate_limit_per_minute == 0
    monkeypatch.setenv("RAMP_RATE_LIMIT_PER_MINUTE", "-1")
    with pytest.raises(ValueError, match="rate_limit_per_minute"):
        Settings(home=tmp_path)


# ----------------------------------------------------------------------------------- the API


def test_over_the_limit_is_a_429_with_retry_after(limited) -> None:
    client, _, clock, auth = limited
    assert client.post("/v1/jobs", json=TRAIN, headers=auth).status_code == 201  # counted once, though
    assert client.get("/v1/jobs", headers=auth).status_code == 200  # the token is named twice
    r = client.get("/v1/jobs/1", headers=auth)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "30" and "rate limit" in r.json()["detail"]
    clock.now += 29
    assert client.get("/v1/jobs/1", headers=auth).headers["retry-after"] == "1"
    clock.now += 1
    assert client.get("/v1/jobs/1", headers=auth).status_code == 200


def test_the_limit_is_per_token(limited) -> None:
    client, app, _, auth = limited
    other = generate_token()
    with app.state.session_factory() as s:
        tokens.create_api_token(s, "erin", other)
    for _ in range(2):
        assert client.get("/v1/jobs", headers=auth).status_code == 200
    assert client.get("/v1/jobs", headers=auth).status_code == 429
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_health_and_driver_routes_are_not_limited(limited, driver_token) -> None:
    client, app, _, auth = limited
    job_id = client.post("/v1/jobs", json=TRAIN, headers=auth).json()["id"]
    driver = {"Authorization": f"Bearer {driver_token(app, job_id)}"}
    for _ in range(5):
        assert client.get(f"/internal/jobs/{job_id}/spec", headers=driver).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    assert client.get("/v1/jobs", headers=auth).status_code == 200  # the token's second request
    assert client.get("/v1/jobs", headers=auth).status_code == 429


def test_requests_refused_before_authentication_cost_nothing(limited) -> None:
    client, _, _, auth = limited
    for _ in range(5):
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/jobs", headers=auth).status_code == 200


def test_the_app_builds_its_limiter_from_the_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home", 1)
    with TestClient(create_app(settings, start_dispatcher=False)) as client:
        assert settings.admin_token_file is not None
        auth = {"Authorization": f"Bearer {settings.admin_token_file.read_text().strip()}"}
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        r = client.get("/v1/jobs", headers=auth)  # one a minute: refills only after ~60 s
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
