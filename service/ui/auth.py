"""Who is calling a web page: the same API tokens as the REST API, presented either as
``Authorization: Bearer <token>`` or as the HttpOnly cookie the login page sets.

A browser sends the cookie on every request to ``/ui/``, including ones another site makes it
send, so every state-changing request authenticated by the cookie must also carry the CSRF token
of its form: an HMAC of the session's token, which only a page rendered for that session knows
(the cookie is also ``SameSite=Strict``; the CSRF token does not depend on the browser honouring
it). A bearer header is never sent by a browser on its own, so requests carrying one need no
CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import HTTPException, Request, Response, status
from sqlalchemy.orm import Session

from service.api.deps import bearer_token
from service.auth.tokens import authenticate_token
from service.db.models import ApiToken

COOKIE_NAME = "ramp_ui_token"
# Only the pages see the cookie: the REST API keeps taking bearer headers alone.
COOKIE_PATH = "/ui"
COOKIE_MAX_AGE_S = 12 * 3600
LOGIN_PATH = "/ui/login"
HOME_PATH = "/ui/jobs"
MAX_TOKEN_CHARS = 512


@dataclass(frozen=True)
class Caller:
    """An authenticated caller of the web pages."""

    token: ApiToken
    via_cookie: bool
    csrf: str


def csrf_token(presented: str) -> str:
    """The CSRF token of a session: derived from its secret, so it needs no server-side state."""
    return hmac.new(presented.encode("utf-8", "surrogatepass"), b"ramp-ui-csrf", hashlib.sha256).hexdigest()


def authenticate(request: Request, session: Session) -> Caller | None:
    """The caller behind the request's bearer header (preferred) or login cookie, or None."""
    presented = bearer_token(request)
    via_cookie = presented is None
    if presented is None:
        presented = request.cookies.get(COOKIE_NAME) or None
    if presented is None or len(presented) > MAX_TOKEN_CHARS:
        return None
    row = authenticate_token(session, presented)
    if row is None:
        return None
    request.state.token_id = row.id
    return Caller(token=row, via_cookie=via_cookie, csrf=csrf_token(presented))


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of the web pages only (never another site)."""
    if (
        not target
        or not target.startswith("/ui/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x20 for c in target)
        or target.startswith(LOGIN_PATH)
    ):
        return HOME_PATH
    return target


def login_redirect(request: Request) -> HTTPException:
    """A 303 to the login page that comes back to the requested page afterwards."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = f"{LOGIN_PATH}?next={quote(safe_next(here), safe='')}"
    return HTTPException(status.HTTP_303_SEE_OTHER, detail="log in first", headers={"Location": location})


def require_page_caller(request: Request, session: Session) -> Caller:
    """For HTML pages: the caller, or a redirect to the login page."""
    caller = authenticate(request, session)
    if caller is None:
        raise login_redirect(request)
    return caller


def require_data_caller(request: Request, session: Session) -> Caller:
    """For the pages' JSON and fragments (fetched by their script): the caller, or 401."""
    caller = authenticate(request, session)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="log in at /ui/login or send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="ramp"'},
        )
    return caller


def check_csrf(caller: Caller, submitted: str | None) -> None:
    """403 unless a cookie-authenticated state change carries its session's CSRF token."""
    if not caller.via_cookie:
        return
    if not submitted or not hmac.compare_digest(submitted, caller.csrf):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="missing or wrong CSRF token; reload the page")


def set_login_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_login_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict")
