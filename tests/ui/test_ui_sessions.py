"""Issue 19, items 7 and 11: the web pages' login.

- The cookie holds a server-side session id, never the API token; the database keeps only its
  hash. Logging out ends the session on the server (a copy of the cookie stops working), and so
  do its expiry and its token's revocation or expiry.
- The cookie is ``Secure`` when the browser came over HTTPS through a trusted proxy
  (``RAMP_TRUSTED_PROXIES``); the proxy headers of any other peer are ignored.
- Login CSRF: a login a browser marks as cross-site (``Origin`` of another host, ``Sec-Fetch-Site:
  cross-site``) is refused and sets no cookie, so another site cannot log a visitor in as the
  attacker.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from ui_support import Ui, ui_app

from service.auth import tokens
from service.core.config import Settings
from service.core.security import generate_token
from service.db.base import utcnow
from service.main import create_app

COOKIE = "ramp_ui_session"


def _settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": f"sqlite:///{home / 'ramp.db'}", "ray_address": None,
                              "log_level": "WARNING", "rate_limit_per_minute": 0}
    return Settings(home=home, **(values | overrides))


def _login(client: TestClient, token: str, **headers: str) -> Any:
    return client.post("/ui/login", data={"token": token, "next": "/ui/jobs"}, headers=headers,
                       follow_redirects=False)


Cookie = tuple[str, str]  # (name, value) as the login answer set it


def _cookie_of(response: Any) -> Cookie:
    name, value = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)
    return name, value


def _opens_pages(client: TestClient, cookie: Cookie) -> bool:
    """Whether a browser holding (a copy of) ``cookie`` gets the pages."""
    client.cookies.clear()
    client.cookies.set(*cookie, path="/ui")
    r = client.get("/ui/jobs", follow_redirects=False)
    client.cookies.clear()
    assert r.status_code in (200, 303), r.status_code
    return r.status_code == 200


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Ui]:
    with ui_app(_settings(tmp_path / "home")) as u:
        yield u


# ------------------------------------------------------------------------ server-side sessions


def test_the_cookie_holds_a_session_id_never_the_token(ui: Ui) -> None:
    r = _login(ui.client, ui.token)
    assert r.status_code == 303
    cookie = _cookie_of(r)
    assert ui.token not in r.headers["set-cookie"], r.headers["set-cookie"]
    assert cookie[0] == COOKIE and cookie[1].startswith("rampui_")
    session_id = cookie[1]
    assert _opens_pages(ui.client, cookie)
    assert not _opens_pages(ui.client, (COOKIE, ui.token))  # the raw token as a cookie opens nothing
    with ui.sessions()() as s:
        dump = " ".join(str(row) for row in s.execute(text("SELECT * FROM ui_sessions")).all())
    assert session_id not in dump and ui.token not in dump  # stored as a hash only


def test_logout_ends_the_session_on_the_server(ui: Ui) -> None:
    cookie = _cookie_of(_login(ui.client, ui.token))
    page = ui.client.get("/ui/jobs")
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    out = ui.client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    # A copy of the cookie taken before logging out (another tab, a stolen cookie) is dead too.
    assert not _opens_pages(ui.client, cookie)
    ui.client.cookies.set(*cookie, path="/ui")
    assert ui.client.get("/ui/api/jobs/1").status_code == 401


def test_revoking_the_token_ends_its_sessions_and_a_new_login_is_a_new_session(ui: Ui) -> None:
    plain = generate_token()
    with ui.sessions()() as s:
        row = tokens.create_api_token(s, "alice", plain)
    first = _cookie_of(_login(ui.client, plain))
    second = _cookie_of(_login(ui.client, plain))
    assert first != second and _opens_pages(ui.client, first) and _opens_pages(ui.client, second)
    with ui.sessions()() as s:
        tokens.revoke_api_token(s, row.id)
    assert not _opens_pages(ui.client, first) and not _opens_pages(ui.client, second)


def test_a_session_expires_on_its_own_and_never_outlives_its_token(tmp_path: Path) -> None:
    from service.db.models import UiSession

    with ui_app(_settings(tmp_path / "home", ui_session_hours=2)) as ui:
        r = _login(ui.client, ui.token)
        assert "Max-Age=7200" in r.headers["set-cookie"]
        session_id = _cookie_of(r)
        assert _opens_pages(ui.client, session_id)
        with ui.sessions()() as s:
            s.execute(update(UiSession).values(expires_at=utcnow() - timedelta(seconds=1)))
            s.commit()
        assert not _opens_pages(ui.client, session_id)

        plain = generate_token()
        with ui.sessions()() as s:
            tokens.create_api_token(s, "brief", plain, expires_at=utcnow() + timedelta(minutes=30))
        r = _login(ui.client, plain)
        assert 1700 <= int(r.headers["set-cookie"].split("Max-Age=", 1)[1].split(";", 1)[0]) <= 1800
        with ui.sessions()() as s:
            row = s.scalars(select(UiSession).order_by(UiSession.id.desc())).first()
            token_row = tokens.verify_api_token(s, plain)
            assert row is not None and row.expires_at == token_row.expires_at


# ------------------------------------------------------------------------------ trusted proxy


@pytest.mark.parametrize("peer,secure", [("127.0.0.1", True), ("127.0.0.2", False)])
def test_secure_cookie_over_https_through_a_trusted_proxy_only(tmp_path: Path, peer: str,
                                                               secure: bool) -> None:
    settings = _settings(tmp_path / "home", trusted_proxies=["127.0.0.1/32"])
    app = create_app(settings, start_dispatcher=False)
    with TestClient(app, client=(peer, 40000)) as client:
        token = settings.admin_token_file.read_text().strip()  # type: ignore[union-attr]
        r = _login(client, token, **{"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
        assert r.status_code == 303
        assert ("Secure" in r.headers["set-cookie"].split(";", 1)[1]) is secure, r.headers["set-cookie"]


def test_a_trusted_proxy_s_client_address_and_host_are_believed_others_are_not(tmp_path: Path) -> None:
    """What the app sees of a request (for the login form's per-address budget and same-origin
    check): the right-most untrusted X-Forwarded-For address and X-Forwarded-Host, from trusted
    peers only."""
    settings = _settings(tmp_path / "home", trusted_proxies=["127.0.0.1", "10.1.0.0/16"])
    app = create_app(settings, start_dispatcher=False)

    @app.get("/ui/test-echo")
    def echo(request: Request) -> dict[str, Any]:
        return {"client": request.client.host if request.client else None, "scheme": request.url.scheme,
                "host": request.headers.get("host")}

    forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.1.2.3", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "ramp.example.org"}
    with TestClient(app, client=("127.0.0.1", 40000)) as trusted:
        seen = trusted.get("/ui/test-echo", headers=forwarded).json()
    assert seen == {"client": "203.0.113.9", "scheme": "https", "host": "ramp.example.org"}
    with TestClient(app, client=("127.0.0.9", 40000)) as untrusted:
        seen = untrusted.get("/ui/test-echo", headers=forwarded).json()
    assert seen == {"client": "127.0.0.9", "scheme": "http", "host": "testserver"}


def test_trusted_proxies_must_be_addresses_or_networks(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMP_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")
    assert Settings(home=tmp_path).trusted_proxies == ["127.0.0.1", "10.0.0.0/8"]
    monkeypatch.setenv("RAMP_TRUSTED_PROXIES", "proxy.local")
    with pytest.raises(ValueError, match="not an IP address or CIDR network"):
        Settings(home=tmp_path)


# --------------------------------------------------------------------------------- login CSRF


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://testserver.evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://sub.testserver"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"},
])
def test_a_cross_site_login_is_refused_and_sets_no_cookie(ui: Ui, headers: dict[str, str]) -> None:
    """The attacker's page posts the attacker's token to /ui/login from the victim's browser."""
    attacker = generate_token()
    with ui.sessions()() as s:
        tokens.create_api_token(s, "mallory", attacker)
    assert _login(ui.client, ui.token).status_code == 303  # the victim's own login
    victim = dict(ui.client.cookies)
    r = _login(ui.client, attacker, **headers)
    assert r.status_code == 403 and "another site" in r.json()["detail"], r.text
    assert "set-cookie" not in r.headers
    assert dict(ui.client.cookies) == victim  # the victim is still the victim


@pytest.mark.parametrize("headers", [
    {},  # curl, scripts: no browser another site could drive
    {"Origin": "http://testserver"},
    {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},  # typed or bookmarked
])
def test_a_same_origin_login_works(ui: Ui, headers: dict[str, str]) -> None:
    r = _login(ui.client, ui.token, **headers)
    assert r.status_code == 303 and r.headers["location"] == "/ui/jobs"
    assert _opens_pages(ui.client, _cookie_of(r))
