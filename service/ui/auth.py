"""Who is calling a web page: the same API tokens as the REST API, presented either as
``Authorization: Bearer <token>`` or through a login session (``service.ui.sessions``) whose id
is the HttpOnly cookie the login page sets. The cookie never holds the token itself.

A browser sends the cookie on every request to ``/ui/``, including ones another site makes it
send, so every state-changing request authenticated by the cookie must also carry the CSRF token
of its form: an HMAC of the session's id, which only a page rendered for that session knows
(the cookie is also ``SameSite=Strict``; the CSRF token does not depend on the browser honouring
it). A bearer header is never sent by a browser on its own, so requests carrying one need no
CSRF token. The login form itself has no session yet: it refuses requests a browser marks as
coming from another site (``check_login_origin``), so no other site can log a visitor in as
someone else (login CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request, Response, status
from sqlalchemy.orm import Session

from service.api.deps import bearer_token, enforce_budget
from service.auth.tokens import authenticate_token
from service.db.models import ApiToken
from service.ui import sessions

# Not the name of the old cookie that held the raw token: such a cookie is simply ignored.
COOKIE_NAME = "ramp_ui_session"
# Only the pages see the cookie: the REST API keeps taking bearer headers alone.
COOKIE_PATH = "/ui"
LOGIN_PATH = "/ui/login"
HOME_PATH = "/ui/jobs"
MAX_TOKEN_CHARS = 512


@dataclass(frozen=True)
class Caller:
    """An authenticated caller of the web pages."""

    token: ApiToken
    via_cookie: bool
    csrf: str
    session_id: str | None = None  # the login session's, when the cookie authenticated the request


def csrf_token(secret: str) -> str:
    """The CSRF token of a session (or of a bearer token): derived from its secret id, which only
    the server and the cookie's holder know."""
    return hmac.new(secret.encode("utf-8", "surrogatepass"), b"ramp-ui-csrf", hashlib.sha256).hexdigest()


def authenticate(request: Request, session: Session) -> Caller | None:
    """The caller behind the request's bearer header (preferred) or login session, or None."""
    presented = bearer_token(request)
    if presented is not None:
        row = authenticate_token(session, presented) if len(presented) <= MAX_TOKEN_CHARS else None
        caller = Caller(token=row, via_cookie=False, csrf=csrf_token(presented)) if row else None
    else:
        session_id = request.cookies.get(COOKIE_NAME) or ""
        row = sessions.resolve(session, session_id) if 0 < len(session_id) <= MAX_TOKEN_CHARS else None
        caller = Caller(token=row, via_cookie=True, csrf=csrf_token(session_id), session_id=session_id) \
            if row else None
    if caller is not None:
        request.state.token_id = caller.token.id
    return caller


# What a browser says of a request's origin (Sec-Fetch-Site) that may log in: the page's own form
# ("same-origin"), or the user typing or bookmarking the URL ("none").
SAME_SITE_FETCH = frozenset({"same-origin", "none"})


def check_login_origin(request: Request) -> None:
    """403 for a login a browser says another site made: ``Sec-Fetch-Site`` other than
    same-origin, or an ``Origin`` that is not this service's own host (``null`` included).
    Browsers send ``Origin`` with every cross-site form POST; clients that send neither header
    (curl, scripts) are no browser another site could drive, and log in as before."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() not in SAME_SITE_FETCH:
        raise _cross_site(f"Sec-Fetch-Site: {fetch_site[:40]}")
    origin = request.headers.get("origin")
    if origin is None:
        return
    own_host = (request.headers.get("host") or "").strip().lower()
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not own_host or parts.netloc.lower() != own_host:
        raise _cross_site(f"Origin: {origin[:80]}")


def _cross_site(what: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN,
                         detail=f"login refused: the request came from another site ({what}); "
                         "log in from this service's own login page")


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
    """For HTML pages, downloads and the forms' actions: the caller, or a redirect to the login
    page; each counts against its token's ``requests`` budget, the one /v1 spends too."""
    caller = authenticate(request, session)
    if caller is None:
        raise login_redirect(request)
    enforce_budget(request, "requests", caller.token.id)
    return caller


def require_data_caller(request: Request, session: Session) -> Caller:
    """For the pages' JSON and fragments (polled by their script): the caller, or 401; each
    counts against its token's ``polls`` budget (service.auth.ratelimit)."""
    caller = authenticate(request, session)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="log in at /ui/login or send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="ramp"'},
        )
    enforce_budget(request, "polls", caller.token.id)
    return caller


def check_login(request: Request) -> None:
    """Before a login is looked at: refused if a browser says another site made it
    (``check_login_origin``), or once the client's address has spent its ``login`` budget."""
    check_login_origin(request)
    enforce_budget(request, "login", request.client.host if request.client else "unknown")


def check_csrf(caller: Caller, submitted: str | None) -> None:
    """403 unless a cookie-authenticated state change carries its session's CSRF token."""
    if not caller.via_cookie:
        return
    if not submitted or not hmac.compare_digest(submitted, caller.csrf):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="missing or wrong CSRF token; reload the page")


def set_login_cookie(response: Response, request: Request, session_id: str, max_age_s: int) -> None:
    """The session's cookie: ``Secure`` when the browser came over HTTPS -- directly, or through a
    trusted proxy that says so (``service.core.proxy``)."""
    response.set_cookie(
        COOKIE_NAME,
        session_id,
        max_age=max(1, max_age_s),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_login_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict")
