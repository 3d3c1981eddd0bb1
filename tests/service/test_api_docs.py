"""Issue 19 (12): ``/docs`` works offline: the page and everything it loads come from the service
(vendored swagger-ui-dist), no reference to another host, no online validator; ``/redoc`` (CDN
and web fonts) is not served."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest


class _Refs(HTMLParser):
    """Every URL the page makes a browser fetch (src / href of any element)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_docs_page_references_no_external_host(api) -> None:
    r = api.client.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    parser = _Refs()
    parser.feed(r.text)
    assert len(parser.urls) >= 3  # the script, the stylesheet, the icon
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url  # same origin: a path, never a host
        assert url.startswith("/docs/static/"), url
        asset = api.client.get(url)
        assert asset.status_code == 200 and asset.content, url
    # No absolute URL anywhere in the page (inline script included): nothing leaves the machine.
    assert re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text) is None, r.text
    assert '"validatorUrl": null' in r.text
    assert '"/openapi.json"' in r.text or "'/openapi.json'" in r.text


def test_the_assets_are_the_vendored_release(api) -> None:
    from service.api.docs import ASSETS_DIR, SWAGGER_UI_VERSION

    bundle = api.client.get("/docs/static/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"]
    assert f'PACKAGE_VERSION:"{SWAGGER_UI_VERSION}"' in bundle.text
    readme = (ASSETS_DIR / "README.md").read_text()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        digest = hashlib.sha256((ASSETS_DIR / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in readme, name
    assert SWAGGER_UI_VERSION in readme
    assert "Apache License" in (ASSETS_DIR / "swagger-ui.LICENSE").read_text()


def test_redoc_is_not_served_and_the_openapi_document_still_is(api) -> None:
    assert api.client.get("/redoc").status_code == 404
    assert api.client.get("/openapi.json").json()["info"]["title"] == "RAMP Orchestrator"


@pytest.mark.slow
def test_the_docs_render_in_a_browser_that_can_reach_no_other_host(live_server) -> None:
    """Chromium with every request off the service's own origin refused: Swagger UI still draws
    the API (its title and the job routes), and nothing tried to leave the machine."""
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    chromium_path = Path("/usr/bin/chromium")
    assert chromium_path.exists(), "Debian's chromium is missing: scripts/test.sh installs it (apt-get)"
    origin = live_server.url
    elsewhere: list[str] = []

    def guard(route) -> None:  # noqa: ANN001
        if route.request.url.startswith(origin + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium_path),
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page()
            page.route("**/*", guard)
            page.goto(f"{origin}/docs", timeout=120_000)
            page.wait_for_selector(".swagger-ui .info .title", timeout=120_000)
            assert "RAMP Orchestrator" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path[data-path=\"/v1/jobs\"]", timeout=120_000)
        finally:
            browser.close()
    assert elsewhere == []
