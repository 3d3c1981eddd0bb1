"""Response headers every answer of the service carries, whatever route produced it.

``X-Content-Type-Options: nosniff`` on everything: a browser must not guess that an artifact a user
uploaded through a job (a ``.json`` that is really HTML) is a page to render on this origin.
``Cache-Control: no-store`` on everything but the static assets: job data, logs and artifacts are
one owner's, and a shared proxy that cached a download (``FileResponse`` sends ``ETag`` and
``Last-Modified``, which invite caching) would hand another user's checkpoint to the next caller.
Set here, once, as middleware, rather than per route: a new route gets them without anyone
remembering to.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NO_STORE = "no-store"
# Files that are the same for every caller (the pages' script, styles, vendored libraries, the API
# docs' assets): these may be cached.
CACHEABLE_PREFIXES = ("/ui/static/", "/docs/static/")


class SecurityHeaders:
    """Pure ASGI (streaming responses such as SSE and file downloads pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = str(scope.get("path", "")).startswith(CACHEABLE_PREFIXES)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if not cacheable and NO_STORE not in headers.get("Cache-Control", ""):
                    headers["Cache-Control"] = NO_STORE
            await send(message)

        await self.app(scope, receive, with_headers)
