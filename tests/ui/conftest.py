"""Fixtures of the web-page tests: the app without Ray behind TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_support import Ui, ui_app

from service.core.config import Settings


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Ui]:
    home = tmp_path / "home"
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'ramp.db'}", ray_address=None,
                        log_level="WARNING", ray_dashboard_url="http://ray.example:8265")
    with ui_app(settings) as ui:
        yield ui
