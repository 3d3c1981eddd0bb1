"""Issue 19 (1): the rate limit covers the web pages too. One ``requests`` budget per token across
``/v1`` and ``/ui`` (a bearer header sent to ``POST /ui/submit`` is no way around it), the pages'
own polling on a separate, larger ``polls`` budget (so an open dashboard keeps working under the
default limit), and a per-address budget for the login form. The clock is injected: nothing here
races the wall clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.core.config import Settings
from service.main import create_app

TRAIN = {"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 20}
SWEEP = {"kind": "sweep", "base": TRAIN, "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}}}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Limited:
    client: TestClient
    app: Any
    settings: Settings
    clock: FakeClock
    token: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def jobs_stored(self) -> int:
        from service.db.models import Job

        with self.app.state.session_factory() as s:
            return int(s.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """make(**settings) -> Limited: the app without Ray, every budget's limiter on one fake clock."""
    from service.auth.ratelimit import BUDGETS, RateLimiter

    opened: list[TestClient] = []

    def build(client_addr: tuple[str, int] = ("127.0.0.1", 50000), **overrides: Any) -> Limited:
        home = tmp_path / f"home{len(opened)}"
        settings = Settings(home=home, database_url=f"sqlite:///{home / 'ramp.db'}", ray_address=None,
                            log_level="WARNING", **overrides)
        app = create_app(settings, start_dispatcher=False)
        clock = FakeClock()
        for budget in BUDGETS.values():
            per_minute = getattr(settings, budget.setting)
            if per_minute:
                setattr(app.state, budget.attr, RateLimiter(per_minute, clock=clock))
        client = TestClient(app, client=client_addr)
        client.__enter__()
        opened.append(client)
        assert settings.admin_token_file is not None
        return Limited(client, app, settings, clock, settings.admin_token_file.read_text().strip())

    yield build
    for client in opened:
        client.__exit__(None, None, None)


def _submit_form(limited: Limited, spec: Any) -> Any:
    body = spec if isinstance(spec, str) else json.dumps(spec)
    return limited.client.post("/ui/submit", data={"spec": body}, headers=limited.bearer,
                               follow_redirects=False)


def test_a_bearer_flood_through_the_submit_form_is_held_to_the_api_budget(make) -> None:
    """The issue's probe: RAMP_RATE_LIMIT_PER_MINUTE=5, ten submissions through POST /ui/submit
    with the token as a bearer header (no CSRF token needed): five jobs, then 429s."""
    limited = make(rate_limit_per_minute=5)
    answers = [_submit_form(limited, TRAIN | {"seed": i}) for i in range(10)]
    assert [a.status_code for a in answers] == [303] * 5 + [429] * 5, [a.status_code for a in answers]
    assert limited.jobs_stored() == 5
    refused = answers[-1]
    assert refused.headers["retry-after"] == "12" and "rate limit" in refused.json()["detail"]
    assert limited.client.get("/v1/jobs", headers=limited.bearer).status_code == 429  # the same budget


def test_the_api_and_the_pages_spend_one_budget(make) -> None:
    limited = make(rate_limit_per_minute=5)
    for url in ("/v1/jobs", "/ui/jobs", "/v1/jobs", "/ui/submit", "/ui/jobs"):
        assert limited.client.get(url, headers=limited.bearer).status_code == 200, url
    for url in ("/v1/jobs", "/ui/jobs", "/ui/compare"):
        r = limited.client.get(url, headers=limited.bearer)
        assert r.status_code == 429 and r.headers["retry-after"] == "12", url
    limited.clock.now += 12
    assert limited.client.get("/ui/jobs", headers=limited.bearer).status_code == 200


def test_a_login_session_spends_its_token_s_budget_too(make) -> None:
    limited = make(rate_limit_per_minute=3)
    login = limited.client.post("/ui/login", data={"token": limited.token}, follow_redirects=False)
    assert login.status_code == 303
    assert [limited.client.get("/ui/jobs").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert limited.client.get("/v1/jobs", headers=limited.bearer).status_code == 429


@pytest.mark.slow  # ~1,000 requests: 15-45 s on a loaded 2-core machine
def test_an_open_dashboard_polls_for_minutes_unthrottled_while_a_bearer_flood_is_throttled(make) -> None:
    """Default limits. Four visible pages of one token poll on their script's schedule for three
    (simulated) minutes -- a sweep page (live JSON + trial table every 2 s), a job page (live JSON
    every 2 s), two job lists (rows every 3 s) -- while the same token floods POST /ui/submit with
    650 bearer requests at once: every poll answers 200; the flood gets exactly what is left of
    the API budget's burst, then 429."""
    from service.ui.routes import LIST_POLL_MS, LIVE_POLL_MS

    limited = make()
    settings = limited.settings
    assert (settings.rate_limit_per_minute, settings.poll_rate_limit_per_minute) == (600, 1200)
    job = limited.client.post("/v1/jobs", json=TRAIN, headers=limited.bearer).json()["id"]
    sweep = limited.client.post("/v1/jobs", json=SWEEP, headers=limited.bearer).json()["id"]
    login = limited.client.post("/ui/login", data={"token": limited.token}, follow_redirects=False)
    assert login.status_code == 303  # the pages poll with the login cookie, as a browser does
    loads = [f"/ui/jobs/{sweep}", f"/ui/jobs/{job}", "/ui/jobs", "/ui/jobs?status=queued"]
    for page in loads:  # each page loads once (the requests budget), then polls (the polls budget)
        assert limited.client.get(page).status_code == 200, page
    spent = 2 + len(loads)
    live, listing = LIVE_POLL_MS // 1000, LIST_POLL_MS // 1000
    pages = [(live, [f"/ui/api/jobs/{sweep}", f"/ui/fragments/jobs/{sweep}/trials"]),
             (live, [f"/ui/api/jobs/{job}"]),
             (listing, ["/ui/fragments/jobs"]),
             (listing, ["/ui/fragments/jobs?status=queued"])]
    flood = [_submit_form(limited, "{not json").status_code for _ in range(650)]
    assert flood == [400] * (600 - spent) + [429] * (50 + spent)
    polls: list[int] = []
    for second in range(3 * 60):
        for every, urls in pages:
            if second % every == 0:
                polls += [limited.client.get(url).status_code for url in urls]
        limited.clock.now += 1
    assert len(polls) == sum(len(urls) * len(range(0, 3 * 60, every)) for every, urls in pages) == 390
    assert set(polls) == {200}
    assert limited.jobs_stored() == 2


def test_the_polls_budget_is_bounded_and_apart_from_the_api_s(make) -> None:
    limited = make(poll_rate_limit_per_minute=3)
    job = limited.client.post("/v1/jobs", json=TRAIN, headers=limited.bearer).json()["id"]
    codes = [limited.client.get(f"/ui/api/jobs/{job}", headers=limited.bearer).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = limited.client.get("/ui/fragments/jobs", headers=limited.bearer)
    assert r.status_code == 429 and "page refreshes per minute per token" in r.json()["detail"]
    assert limited.client.get("/v1/jobs", headers=limited.bearer).status_code == 200


def test_login_attempts_are_limited_per_client_address(make) -> None:
    limited = make(login_rate_limit_per_minute=3)
    for _ in range(3):
        assert limited.client.post("/ui/login", data={"token": "ramp_guess"}).status_code == 401
    r = limited.client.post("/ui/login", data={"token": limited.token}, follow_redirects=False)
    assert r.status_code == 429 and r.headers["retry-after"] == "20" and "set-cookie" not in r.headers
    other = TestClient(limited.app, client=("127.0.0.2", 50000))
    assert other.post("/ui/login", data={"token": limited.token}, follow_redirects=False).status_code == 303
    limited.clock.now += 20
    r = limited.client.post("/ui/login", data={"token": limited.token}, follow_redirects=False)
    assert r.status_code == 303


def test_behind_a_trusted_proxy_the_login_budget_is_the_forwarded_client_s(make) -> None:
    limited = make(login_rate_limit_per_minute=2, trusted_proxies=["127.0.0.1"])

    def attempt(client_ip: str) -> int:
        return limited.client.post("/ui/login", data={"token": "ramp_guess"},
                                   headers={"X-Forwarded-For": client_ip}).status_code

    assert [attempt("203.0.113.5") for _ in range(3)] == [401, 401, 429]
    assert attempt("203.0.113.6") == 401  # another client behind the same proxy


def test_the_budgets_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert (settings.poll_rate_limit_per_minute, settings.login_rate_limit_per_minute) == (1200, 30)
    monkeypatch.setenv("RAMP_POLL_RATE_LIMIT_PER_MINUTE", "0")
    monkeypatch.setenv("RAMP_LOGIN_RATE_LIMIT_PER_MINUTE", "5")
    settings = Settings(home=tmp_path)
    assert (settings.poll_rate_limit_per_minute, settings.login_rate_limit_per_minute) == (0, 5)
