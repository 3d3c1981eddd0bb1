"""API token lifecycle on /v1: revoked and expired tokens get a 401 saying which, a live token
with an expiry works until then, and ``last_used_at`` moves at most once a minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.auth import tokens
from service.core.security import generate_token
from service.db.base import utcnow
from service.db.models import ApiToken


def _new_token(api: Any, name: str = "carol", **kwargs: Any) -> tuple[str, int]:
    plain = generate_token()
    with api.sessions()() as s:
        row = tokens.create_api_token(s, name, plain, **kwargs)
    return plain, row.id


def _get(api: Any, plain: str) -> Any:
    return api.client.get("/v1/jobs", headers={"Authorization": f"Bearer {plain}"})


def _row(api: Any, token_id: int) -> ApiToken:
    with api.sessions()() as s:
        row = s.get(ApiToken, token_id)
        assert row is not None
        return row


def test_a_revoked_token_gets_401_token_revoked(api) -> None:
    plain, token_id = _new_token(api)
    assert _get(api, plain).status_code == 200
    with api.sessions()() as s:
        tokens.revoke_api_token(s, token_id)
    r = _get(api, plain)
    assert r.status_code == 401 and r.json()["detail"] == "token revoked"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_an_expired_token_gets_401_token_expired(api) -> None:
    plain, _ = _new_token(api, expires_at=utcnow() - timedelta(seconds=1))
    r = _get(api, plain)
    assert r.status_code == 401 and r.json()["detail"] == "token expired"
    assert r.headers["www-authenticate"].startswith("Bearer")
    live, _ = _new_token(api, "dave", expires_at=utcnow() + timedelta(hours=1))
    assert _get(api, live).status_code == 200


def test_an_unknown_token_keeps_its_message(api) -> None:
    r = _get(api, generate_token())
    assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked token"


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_authenticate_token_refuses_what_the_api_refuses(api, state: str) -> None:
    """The web pages authenticate through ``authenticate_token``: the same rule applies."""
    kwargs = {"expires_at": utcnow() - timedelta(days=1)} if state == "expired" else {}
    plain, token_id = _new_token(api, **kwargs)
    if state == "revoked":
        with api.sessions()() as s:
            tokens.revoke_api_token(s, token_id)
    with api.sessions()() as s:
        assert tokens.authenticate_token(s, plain) is None
        with pytest.raises(tokens.TokenRejected, match=f"token {state}"):
            tokens.verify_api_token(s, plain)


def test_expiry_is_checked_against_the_given_clock(api) -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    plain, _ = _new_token(api, expires_at=at)
    with api.sessions()() as s:
        assert tokens.verify_api_token(s, plain, now=at - timedelta(seconds=1)).name == "carol"
        with pytest.raises(tokens.TokenRejected, match="token expired"):
            tokens.verify_api_token(s, plain, now=at)


def test_last_used_at_is_written_at_most_once_a_minute(api) -> None:
    plain, token_id = _new_token(api)
    assert _row(api, token_id).last_used_at is None
    assert _get(api, plain).status_code == 200
    assert _row(api, token_id).last_used_at is not None  # a request records the use

    t0 = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
    with api.sessions()() as s:
        tokens.verify_api_token(s, plain, now=t0)
    assert _row(api, token_id).last_used_at == t0
    for later in (timedelta(seconds=1), timedelta(seconds=59)):
        with api.sessions()() as s:
            tokens.verify_api_token(s, plain, now=t0 + later)
        assert _row(api, token_id).last_used_at == t0, later  # within the minute: no write
    with api.sessions()() as s:
        tokens.verify_api_token(s, plain, now=t0 + timedelta(seconds=61))
    assert _row(api, token_id).last_used_at == t0 + timedelta(seconds=61)


def test_a_stale_row_does_not_overwrite_a_fresher_last_used_at(api) -> None:
    """Two requests that both loaded the row before either wrote: the conditional UPDATE keeps the
    first write (no second write within the minute)."""
    plain, token_id = _new_token(api)
    t0 = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
    with api.sessions()() as s1, api.sessions()() as s2:
        row1 = s1.get(ApiToken, token_id)
        row2 = s2.get(ApiToken, token_id)
        assert row1 is not None and row2 is not None
        tokens.touch_last_used(s1, row1, t0)
        tokens.touch_last_used(s2, row2, t0 + timedelta(seconds=5))  # row2 still says "never used"
    assert _row(api, token_id).last_used_at == t0
