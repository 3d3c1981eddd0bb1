"""The API's interactive documentation, ``/docs`` (Swagger UI), served entirely by the service.

FastAPI's stock page loads Swagger UI from a public CDN and its favicon from another site: blank on
a machine without internet access, and a third party's script running next to the API token a
user pastes into "Authorize". Here the assets come from the package (``static/swagger-ui/``,
vendored from npm; see its README for the version and licence) and the online validator, which
would send the API document to validator.swagger.io, is turned off. ReDoc (``/redoc``), which
needs a CDN and web fonts too, is not served.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/static"
ASSETS_DIR = Path(__file__).parent / "static" / "swagger-ui"
SWAGGER_UI_VERSION = "5.35.0"  # the vendored swagger-ui-dist; tests check the bundle says the same


def install(app: FastAPI) -> None:
    """``/docs`` and its assets; create the app with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},
        )
