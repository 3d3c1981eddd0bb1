"""Fixtures of the web-page tests: the app without Ray behind TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_support import Ui

from service.core.config import Settings


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Ui]:
    from fastapi.testclient import TestClient

    from service.main import create_app

    home = tmp_path / "home"
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'ramp.db'}", ray_address=None,
                        log_level="WARNING", ray_dashboard_url="http://ray.example:8265")
    app = create_app(settings, start_dispatcher=False)
    with TestClient(app) as client:
        assert settings.admin_token_file is not None
        token = settings.admin_token_file.read_text().strip()
        yield Ui(client=client, app=app, settings=settings, token=token)
