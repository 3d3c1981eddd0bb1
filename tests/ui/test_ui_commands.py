"""The pages and the REST API act on jobs through the same functions (``service.jobs.commands``):
the same validation, idempotency and log lines, whichever way a job was submitted or changed."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from ui_support import Ui

from service.jobs import commands

TRAIN = {"kind": "train", "method": "nt", "epochs": 1, "max_steps": 2}
KEY = re.compile(r'name="idempotency_key" value="([0-9a-f]{32})"')


class RayLogs:
    def logs(self, ray_job_id: str) -> str:
        return f"log of {ray_job_id}"


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("submit", "cancel", "retry", "logs"):
        def spy(*args: Any, _real: Any = getattr(commands, name), _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(commands, name, spy)
    return calls


def _job_id(response: Any) -> int:
    assert response.status_code == 303, response.text
    return int(response.headers["location"].rsplit("/", 1)[1])


def test_the_pages_and_the_api_call_the_same_job_commands(ui: Ui, spied: list[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    ui.app.state.backend = RayLogs()
    caplog.set_level(logging.INFO, logger="service.jobs")
    api_job = ui.submit(TRAIN)
    assert ui.client.post(f"/v1/jobs/{api_job}/cancel", headers=ui.auth).json()["status"] == "cancelled"
    assert ui.client.post(f"/v1/jobs/{api_job}/retry", headers=ui.auth).status_code == 200
    assert ui.client.get(f"/v1/jobs/{api_job}/logs", headers=ui.auth).status_code == 404  # no Ray job yet
    assert spied == ["submit", "cancel", "retry", "logs"]
    api_lines = [r.getMessage() for r in caplog.records if r.name == "service.jobs"]

    spied.clear()
    caplog.clear()
    csrf = ui.login()
    key = KEY.search(ui.client.get("/ui/submit").text).group(1)
    form = {"csrf": csrf, "spec": json.dumps(TRAIN), "idempotency_key": key}
    page_job = _job_id(ui.client.post("/ui/submit", data=form, follow_redirects=False))
    # The same form sent twice (a double click, a reload): one job, as with the API's Idempotency-Key.
    assert _job_id(ui.client.post("/ui/submit", data=form, follow_redirects=False)) == page_job
    assert ui.client.post(f"/ui/jobs/{page_job}/cancel", data={"csrf": csrf}).status_code == 200
    assert ui.client.post(f"/ui/jobs/{page_job}/retry", data={"csrf": csrf}).status_code == 200
    assert ui.client.get(f"/ui/jobs/{page_job}/log").text == "(no Ray job yet)"
    assert spied == ["submit", "submit", "cancel", "retry", "logs"]
    page_lines = [r.getMessage() for r in caplog.records if r.name == "service.jobs"]
    assert page_lines == api_lines == ["job submitted", "cancel requested", "retry requested"]

    jobs = ui.client.get("/v1/jobs", headers=ui.auth).json()["jobs"]
    assert sorted(j["id"] for j in jobs) == [api_job, page_job]


def test_a_page_submission_is_validated_by_the_api_s_rules(ui: Ui, spied: list[str]) -> None:
    csrf = ui.login()
    form = {"csrf": csrf, "spec": json.dumps(TRAIN | {"epochs": 0}), "idempotency_key": "k1"}
    page = ui.client.post("/ui/submit", data=form)
    api = ui.client.post("/v1/jobs", json=TRAIN | {"epochs": 0}, headers=ui.auth)
    assert page.status_code == api.status_code == 422
    assert "body.epochs" in page.text and api.json()["detail"][0]["field"] == "body.epochs"
    assert spied == ["submit", "submit"]
    bad_key = ui.client.post("/ui/submit", data=form | {"spec": json.dumps(TRAIN), "idempotency_key": "\x01"})
    assert bad_key.status_code == 409 and "Idempotency-Key" in bad_key.text
