"""Tenancy on the web pages: the rule of the REST API (``service.auth.access``). A non-admin token
sees and acts on its own owner's jobs only: another owner's job gets, on every page, fragment and
button that names a job, exactly what a job that does not exist gets (the 404 page, or the 404 of
the pages' JSON), and nothing changes; listings and the comparison leave it out; a submission
from the pages is owned by the caller and cannot start from another owner's job. An admin token
sees everything. Same as ``tests/service/test_tenancy.py`` for ``/v1``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from ui_support import CSRF, epoch_report, final_metrics

from service.auth import principals, tokens
from service.core.config import Settings
from service.core.security import generate_token
from service.db.models import Job
from service.events import store as event_store
from service.jobs import transitions
from service.main import create_app

TRAIN = {"kind": "train", "method": "ramp", "epochs": 2, "max_steps": 4}
SWEEP = {"kind": "sweep", "base": TRAIN | {"monitor_n": 16},
         "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}, "epsilons.l1": {"grid": [8, 12]}}}
MISSING = 987_654
ERROR = re.compile(r'<p class="flash error" role="alert" id="error">(.*?)</p>', re.S)
ROW = re.compile(r'<tr data-job-id="(\d+)"')


def _settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": f"sqlite:///{home / 'ramp.db'}", "ray_address": None,
                              "log_level": "WARNING", "rate_limit_per_minute": 0}
    return Settings(home=home, **(values | overrides))


def _ui_job_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the pages that names a job in its path, read from the app itself:
    a new page joins the probes below without anyone listing it."""
    app = create_app(_settings(Path("/nonexistent-ramp-home"), database_url="sqlite://"),
                     start_dispatcher=False)
    return sorted(
        (method, route.path)
        for route in iter_route_contexts(app.routes)
        if (route.path or "").startswith("/ui/") and "{job_id}" in (route.path or "")
        for method in route.methods or ()
        if method != "HEAD"
    )


JOB_ROUTES = _ui_job_routes()


class FakeBackend:
    def logs(self, ray_job_id: str) -> str:
        return f"log of {ray_job_id}\n"


@dataclass
class World:
    client: TestClient
    app: Any
    settings: Settings
    tokens: dict[str, str]  # alice, bob (non-admin), root (admin)
    a_job: int  # alice's train job: succeeded, with epochs, a result, a Ray job id and an artifact
    a_sweep: int  # alice's sweep: cancelled, with trials and a trial checkpoint
    b_job: int  # bob's train job: succeeded

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def submit(self, who: str, spec: dict[str, Any]) -> int:
        r = self.client.post("/v1/jobs", json=spec, headers=self.auth(who))
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def row(self, job_id: int) -> tuple[Any, ...]:
        with self.app.state.session_factory() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job.status, job.attempt, job.updated_at


def _finished_train(world: World, who: str, union: float) -> int:
    job_id = world.submit(who, TRAIN)
    with world.app.state.session_factory() as s:
        transitions.transition(s, job_id, "dispatching")
        transitions.transition(s, job_id, "running", ray_job_id=f"ramp-{job_id}-1")
        event_store.add_events(s, job_id, [
            {"seq": 0, "type": "metrics",
             "data": epoch_report(1, clean=0.5, union=union, ce=2.0, pairing=0.3)},
            {"seq": 1, "type": "log", "data": {"message": f"{who}'s secret log line", "level": "info"}},
        ])
        transitions.transition(s, job_id, "succeeded",
                               result=final_metrics(0.9, 0.4, 0.5, 0.3, union))
    job_dir = world.settings.job_dir(job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "metrics.json").write_text(json.dumps({"owner": who}))
    return job_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = _settings(tmp_path_factory.mktemp("ui-tenancy") / "home")
    app = create_app(settings, start_dispatcher=False)
    with TestClient(app) as client:
        plain: dict[str, str] = {}
        with app.state.session_factory() as s:
            for name, admin in (("alice", False), ("bob", False), ("root", True)):
                plain[name] = generate_token()
                tokens.create_api_token(s, name, plain[name], is_admin=admin)
        world = World(client, app, settings, plain, 0, 0, 0)
        world.a_job = _finished_train(world, "alice", 0.275)
        world.a_sweep = world.submit("alice", SWEEP)
        assert client.post(f"/v1/jobs/{world.a_sweep}/cancel",
                           headers=world.auth("alice")).json()["status"] == "cancelled"
        trial_dir = settings.job_dir(world.a_sweep) / "trials" / "trial_0000" / "checkpoint"
        trial_dir.mkdir(parents=True)
        (trial_dir / "model.safetensors").write_bytes(b"alice's weights")
        world.b_job = _finished_train(world, "bob", 0.125)
        yield world


def _path(template: str, job_id: int) -> str:
    values = {"job_id": str(job_id), "name": "metrics.json"}
    path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], template)
    assert "{" not in path, f"no probe value for a parameter of {template}: add one to _path"
    return path


def _job_for(world: World, template: str) -> int:
    """Alice's job a probe of ``template`` is about: the sweep for the trials, else the train job."""
    return world.a_sweep if "trials" in template else world.a_job


def _call(world: World, who: str, method: str, template: str, job_id: int) -> Any:
    # A bearer header needs no CSRF token on the buttons (a browser never sends one on its own).
    return world.client.request(method, _path(template, job_id), headers=world.auth(who),
                                follow_redirects=False)


def _not_found(r: Any) -> str:
    """What a 404 says: the error of the 404 page, or the detail of the pages' JSON."""
    assert r.status_code == 404, (r.request.url, r.status_code, r.text[:500])
    if r.headers["content-type"].startswith("text/html"):
        m = ERROR.search(r.text)
        assert m is not None, r.text[:500]
        return m.group(1)
    return r.json()["detail"]


def test_the_pages_naming_a_job_are_all_probed() -> None:
    assert {p for _, p in JOB_ROUTES} >= {"/ui/jobs/{job_id}", "/ui/api/jobs/{job_id}",
                                          "/ui/fragments/jobs/{job_id}/trials", "/ui/jobs/{job_id}/log",
                                          "/ui/jobs/{job_id}/artifacts/{name:path}",
                                          "/ui/jobs/{job_id}/cancel", "/ui/jobs/{job_id}/retry"}


@pytest.mark.parametrize("ray", [False, True], ids=["no-ray", "ray"])
@pytest.mark.parametrize(("method", "template"), JOB_ROUTES, ids=lambda v: str(v))
def test_another_owner_gets_the_404_of_a_missing_job_and_changes_nothing(
    world: World, method: str, template: str, ray: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(world.app.state, "backend", FakeBackend() if ray else None, raising=False)
    target = _job_for(world, template)
    before = world.row(target)
    hidden = _call(world, "bob", method, template, target)
    missing = _call(world, "bob", method, template, MISSING)
    assert _not_found(hidden) == f"job {target} not found"
    assert _not_found(missing) == f"job {MISSING} not found"
    assert hidden.headers["content-type"] == missing.headers["content-type"]
    assert "alice" not in hidden.text and "secret" not in hidden.text
    assert world.row(target) == before


@pytest.mark.parametrize(("method", "template"), JOB_ROUTES, ids=lambda v: str(v))
@pytest.mark.parametrize("who", ["alice", "root"])
def test_the_owner_and_an_admin_reach_the_job_on_every_page(world: World, who: str, method: str,
                                                            template: str) -> None:
    """The control: the probes above hit real pages (so their 404s come from tenancy)."""
    target = _job_for(world, template)
    r = _call(world, who, method, template, target)
    if template.endswith("/cancel"):  # a succeeded job: refused by the state machine, not hidden
        assert r.status_code == 409 and "already finished" in r.text, r.text[:500]
    elif template.endswith("/retry"):  # succeeded: not retryable either
        assert r.status_code == 409, r.text[:500]
    else:
        assert r.status_code == 200, (template, r.status_code, r.text[:500])


def test_the_jobs_page_lists_a_caller_its_own_jobs_and_an_admin_everything(world: World) -> None:
    def listed(who: str, query: str = "") -> list[int]:
        page = world.client.get(f"/ui/jobs{query}", headers=world.auth(who))
        fragment = world.client.get(f"/ui/fragments/jobs{query}", headers=world.auth(who))
        assert page.status_code == fragment.status_code == 200
        ids = [int(i) for i in ROW.findall(page.text)]
        assert [int(i) for i in ROW.findall(fragment.text)] == ids  # the live refresh too
        api = world.client.get(f"/v1/jobs{query}", headers=world.auth(who)).json()["jobs"]
        assert ids == [j["id"] for j in api]  # exactly what the API shows the same token
        return ids

    assert set(listed("alice")) == {world.a_job, world.a_sweep}
    assert listed("bob") == [world.b_job]
    assert {world.a_job, world.a_sweep, world.b_job} <= set(listed("root"))
    assert listed("bob", "?status=succeeded&kind=train&method=ramp") == [world.b_job]
    assert listed("bob", "?kind=sweep") == []
    assert listed("alice", "?kind=sweep") == [world.a_sweep]


def test_the_comparison_leaves_another_owner_s_jobs_out_like_missing_ones(world: World) -> None:
    text = world.client.get(f"/ui/compare?ids={world.a_job},{world.b_job},{MISSING}",
                            headers=world.auth("bob")).text
    table = re.search(r'<table class="grid results" id="compare-table">.*?</table>', text, re.S).group(0)
    assert [int(i) for i in ROW.findall(table)] == [world.b_job]
    assert f"Not found: {world.a_job}, {MISSING}" in text
    data = json.loads(re.search(r'<script id="page-data" type="application/json">(.*?)</script>',
                                text, re.S).group(1))
    labels = {d["label"] for c in data["curves"] for d in c["datasets"]}
    labels |= {e["label"] for e in data["epochs"]}
    assert labels == {f"#{world.b_job} ramp"}
    # The same ids as an admin: both jobs side by side.
    admin = world.client.get(f"/ui/compare?ids={world.a_job},{world.b_job}", headers=world.auth("root")).text
    assert [int(i) for i in ROW.findall(admin)] == [world.a_job, world.b_job]


def test_the_submit_form_cannot_start_from_or_probe_another_owner_s_job(world: World) -> None:
    bob = world.auth("bob")
    for kind in ("finetune", "eval"):
        hidden = world.client.get(f"/ui/submit?kind={kind}&job_id={world.a_job}", headers=bob)
        missing = world.client.get(f"/ui/submit?kind={kind}&job_id={MISSING}", headers=bob)
        assert _not_found(hidden) == f"job {world.a_job} not found"
        assert _not_found(missing) == f"job {MISSING} not found"
    trial = world.client.get(f"/ui/submit?kind=finetune&job_id={world.a_sweep}&trial=trial_0000", headers=bob)
    assert _not_found(trial) == f"job {world.a_sweep} not found"

    specs = (
        {"kind": "finetune", "model": "small-cnn", "epochs": 1, "init_from": {"job_id": "{id}"}},
        {"kind": "finetune", "model": "small-cnn", "epochs": 1,
         "init_from": {"job_id": "{id}", "trial": "trial_0000"}},
        {"kind": "eval", "job_id": "{id}", "n": 8},
    )
    for spec in specs:
        answers = []
        for job_id in (world.a_sweep if "trial" in json.dumps(spec) else world.a_job, MISSING):
            body = json.loads(json.dumps(spec).replace('"{id}"', str(job_id)))
            r = world.client.post("/ui/submit", data={"spec": json.dumps(body)}, headers=bob)
            assert r.status_code == 422, (spec, r.status_code, r.text[:500])
            answers.append(ERROR.search(r.text).group(1).replace(str(job_id), "ID"))
        assert answers[0] == answers[1] and "does not exist" in answers[0], answers


def test_a_job_submitted_from_the_pages_is_the_caller_s_and_its_paths_are_confined(world: World) -> None:
    r = world.client.post("/ui/submit", data={"spec": json.dumps(TRAIN)}, headers=world.auth("bob"),
                          follow_redirects=False)
    assert r.status_code == 303, r.text[:500]
    job_id = int(r.headers["location"].rsplit("/", 1)[1])
    assert world.client.get(f"/v1/jobs/{job_id}", headers=world.auth("bob")).status_code == 200
    assert world.client.get(f"/v1/jobs/{job_id}", headers=world.auth("alice")).status_code == 404
    assert world.client.get(f"/ui/jobs/{job_id}", headers=world.auth("alice")).status_code == 404
    with world.app.state.session_factory() as s:
        owner_id = s.get(Job, job_id).owner_id
        assert principals.names(s, {owner_id}) == {owner_id: "bob"}
    # Paths a user types must lie under the data roots, as for POST /v1/jobs.
    for spec, field in ((TRAIN | {"data_root": "/etc"}, "body.data_root"),
                        ({"kind": "eval", "checkpoint": "/etc"}, "body.checkpoint")):
        refused = world.client.post("/ui/submit", data={"spec": json.dumps(spec)}, headers=world.auth("bob"))
        assert refused.status_code == 422 and field in refused.text, refused.text[:500]
        assert "outside the allowed data roots" in refused.text


def test_a_cookie_session_of_another_owner_sees_and_changes_nothing(world: World) -> None:
    browser = TestClient(world.app)
    r = browser.post("/ui/login", data={"token": world.tokens["bob"], "next": "/ui/jobs"},
                     follow_redirects=False)
    assert r.status_code == 303
    jobs = browser.get("/ui/jobs")
    assert [int(i) for i in ROW.findall(jobs.text)] == [j["id"] for j in world.client.get(
        "/v1/jobs", headers=world.auth("bob")).json()["jobs"]]
    assert world.a_job not in [int(i) for i in ROW.findall(jobs.text)]
    csrf = CSRF.search(jobs.text).group(1)
    assert _not_found(browser.get(f"/ui/jobs/{world.a_job}")) == f"job {world.a_job} not found"
    before = world.row(world.a_sweep)
    assert _not_found(browser.post(f"/ui/jobs/{world.a_sweep}/retry", data={"csrf": csrf})) == (
        f"job {world.a_sweep} not found")
    assert world.row(world.a_sweep) == before
    weights = "trials/trial_0000/checkpoint/model.safetensors"
    download = browser.get(f"/ui/jobs/{world.a_sweep}/artifacts/{weights}")
    assert download.status_code == 404 and b"alice's weights" not in download.content
