"""Helpers shared by the service tests' fixtures (conftest) and the web-page tests (tests/ui): the app
without Ray behind TestClient, the Authorization header of a token, and a session factory on a
database URL. Imported, unlike a conftest."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.db.session import make_engine, make_session_factory


class BearerAuth:
    """``auth``: the Authorization header carrying ``token`` (a field of the dataclass using it)."""

    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Api(BearerAuth):
    client: object  # fastapi.testclient.TestClient
    app: object
    settings: Settings
    token: str

    def sessions(self) -> sessionmaker[Session]:
        return self.app.state.session_factory  # type: ignore[attr-defined]


A = TypeVar("A", bound=Api)


@contextlib.contextmanager
def app_without_ray(settings: Settings, kind: type[A] = Api) -> Iterator[A]:
    """The app (start_dispatcher=False) behind TestClient, with its admin token, as ``kind``."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    app = create_app(settings, start_dispatcher=False)
    with TestClient(app) as client:
        assert settings.admin_token_file is not None
        token = settings.admin_token_file.read_text().strip()
        yield kind(client=client, app=app, settings=settings, token=token)


@contextlib.contextmanager
def session_factory_on(url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on its own engine for ``url``, disposed afterwards."""
    engine = make_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()
