"""The web dashboard, served by the service itself under ``/ui/`` (see ``docs/ui.md``)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.ui.routes import STATIC_DIR, router


def install(app: FastAPI) -> None:
    """Add the pages and their static files (the script, the stylesheet, vendored Chart.js)."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
