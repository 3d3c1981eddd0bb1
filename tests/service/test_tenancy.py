"""Tenancy: a job belongs to its submitting token's owner (a principal, by id). Owner B gets a 404 --
the very body of a job that does not exist -- on every /v1 route for owner A's job, and changes
nothing; listings show a caller its own jobs; admins see and act on everything; submissions cannot
start from another owner's checkpoint; an idempotent replay never returns another owner's job."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from service.auth import tokens
from service.auth.access import Principal, owned_job
from service.core.config import Settings
from service.core.security import generate_token
from service.db.models import ApiToken, IdempotencyKey, Job
from service.jobs import store
from service.main import create_app

TRAIN = {"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 20}
BASE = {"method": "ramp", "dataset": "mnist-5k", "epochs": 1, "max_steps": 4, "train_n": 64,
        "batch_size": 32, "monitor_n": 16, "eval_n": 16, "checks_n": 0}
SWEEP = {"kind": "sweep", "base": BASE, "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}}}
MISSING = 987_654
# The /v1 routes that name no job: each has its own tenancy test below.
NO_JOB_ROUTES = {("GET", "/v1/jobs"), ("POST", "/v1/jobs")}


def _settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": f"sqlite:///{home / 'ramp.db'}", "ray_address": None,
                              "log_level": "WARNING", "sse_poll_interval_s": 0.05, "rate_limit_per_minute": 0}
    return Settings(home=home, **(values | overrides))


def _v1_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the public API, read from the app itself: a new route joins the
    tests below without anyone listing it (and fails them until it enforces tenancy)."""
    settings = _settings(Path("/nonexistent-ramp-home"), database_url="sqlite://")
    app = create_app(settings, start_dispatcher=False)
    # iter_route_contexts flattens the included routers (app.routes holds them unexpanded).
    return sorted(
        (method, route.path)
        for route in iter_route_contexts(app.routes)
        if (route.path or "").startswith("/v1/")
        for method in route.methods or ()
    )


V1_ROUTES = _v1_routes()
# Routes that name jobs in their query (``{job_id}`` in a probe's params is replaced like a path's).
QUERY_JOB_ROUTES = {("GET", "/v1/compare"): {"ids": "{job_id}"}}
JOB_ROUTES = [r for r in V1_ROUTES if "{job_id}" in r[1] or r in QUERY_JOB_ROUTES]
# The event stream is the same route with ?follow=true: probed separately.
PROBES = [(m, p, QUERY_JOB_ROUTES.get((m, p), {})) for m, p in JOB_ROUTES] + [
    ("GET", "/v1/jobs/{job_id}/events", {"follow": "true"})]


class FakeBackend:
    def logs(self, ray_job_id: str) -> str:
        return f"log of {ray_job_id}\n"

    def ping(self) -> bool:
        return True


@dataclass
class World:
    client: TestClient
    app: Any
    settings: Settings
    auth: dict[str, dict[str, str]]  # alice, bob (non-admin), root (admin)
    a_job: int  # alice's sweep: cancelled, with trials, a Ray job id and an artifact
    b_job: int  # bob's train job


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = _settings(tmp_path_factory.mktemp("tenancy") / "home")
    app = create_app(settings, start_dispatcher=False)
    with TestClient(app) as client:
        auth = {}
        with app.state.session_factory() as s:
            for name, admin in (("alice", False), ("bob", False), ("root", True)):
                plain = generate_token()
                tokens.create_api_token(s, name, plain, is_admin=admin)
                auth[name] = _auth(plain)
        r = client.post("/v1/jobs", json=SWEEP, headers=auth["alice"])
        assert r.status_code == 201, r.text
        a_job = r.json()["id"]
        assert client.post(f"/v1/jobs/{a_job}/cancel", headers=auth["alice"]).json()["status"] == "cancelled"
        world = World(client, app, settings, auth, a_job, 0)
        _set_ray_job(world)
        (settings.job_dir(a_job) / "sub").mkdir(parents=True)
        (settings.job_dir(a_job) / "sub" / "out.txt").write_text("alice's result")
        app.state.backend = FakeBackend()
        world.b_job = client.post("/v1/jobs", json=TRAIN, headers=auth["bob"]).json()["id"]
        yield world


def _set_ray_job(world: World) -> None:
    with world.app.state.session_factory() as s:
        s.execute(update(Job).where(Job.id == world.a_job).values(ray_job_id="raysubmit_a"))
        s.commit()


def _path(template: str, job_id: int) -> str:
    values = {"job_id": str(job_id), "name": "sub/out.txt", "trial_id": "trial_0000"}
    path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], template)
    assert "{" not in path, f"no probe value for a parameter of {template}: add one to _path"
    return path


def _call(world: World, who: str, method: str, template: str, params: dict[str, str], job_id: int) -> Any:
    query = {k: v.replace("{job_id}", str(job_id)) for k, v in params.items()}
    return world.client.request(method, _path(template, job_id), params=query, headers=world.auth[who])


def _row(world: World, job_id: int) -> tuple[Any, ...]:
    with world.app.state.session_factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.status, job.attempt, job.updated_at


def test_the_public_routes_are_all_known() -> None:
    """Every /v1 route either names a job (probed below) or is one of the listed job-less routes."""
    assert len(JOB_ROUTES) >= 10, V1_ROUTES
    assert set(V1_ROUTES) - set(JOB_ROUTES) == NO_JOB_ROUTES


@pytest.mark.parametrize(("method", "template", "params"), PROBES, ids=lambda v: str(v) if v else "-")
def test_another_owner_gets_the_404_of_a_missing_job_and_changes_nothing(
    world: World, method: str, template: str, params: dict[str, str]
) -> None:
    before = _row(world, world.a_job)
    r = _call(world, "bob", method, template, params, world.a_job)
    missing = _call(world, "bob", method, template, params, MISSING)
    assert r.status_code == 404, (template, r.status_code, r.text)
    assert r.json() == {"detail": f"job {world.a_job} not found"}
    assert missing.status_code == 404 and missing.json() == {"detail": f"job {MISSING} not found"}
    assert _row(world, world.a_job) == before


@pytest.mark.parametrize(("method", "template", "params"), PROBES, ids=lambda v: str(v) if v else "-")
@pytest.mark.parametrize("who", ["alice", "root"])
def test_the_owner_and_an_admin_reach_the_job_on_every_route(
    world: World, who: str, method: str, template: str, params: dict[str, str]
) -> None:
    """The control: the probes above hit real resources (so their 404s come from tenancy)."""
    r = _call(world, who, method, template, params, world.a_job)
    if template.endswith("/retry"):  # cancelled -> queued: put it back for the other probes
        assert r.status_code == 200, r.text
        assert world.client.post(f"/v1/jobs/{world.a_job}/cancel", headers=world.auth[who]).status_code == 200
        _set_ray_job(world)  # a retry clears the attempt's Ray job id
    elif template.endswith("/cancel"):
        assert r.status_code == 409, r.text  # already cancelled: refused by the state machine, not hidden
    else:
        assert r.status_code == 200, (template, r.status_code, r.text)


def test_listings_show_a_caller_its_own_jobs_and_an_admin_everything(world: World) -> None:
    def ids(who: str, **params: Any) -> list[int]:
        r = world.client.get("/v1/jobs", params=params, headers=world.auth[who])
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["jobs"]]

    assert ids("alice") == [world.a_job]
    assert ids("bob") == [world.b_job]
    assert {world.a_job, world.b_job} <= set(ids("root"))
    assert ids("bob", kind="sweep") == [] and ids("alice", status="cancelled") == [world.a_job]
    # Paging walks the caller's jobs only.
    extra = [world.client.post("/v1/jobs", json=TRAIN | {"seed": i}, headers=world.auth["bob"]).json()["id"]
             for i in range(2)]
    seen, cursor = [], None
    while True:
        r = world.client.get("/v1/jobs", params={"limit": 1} | ({"cursor": cursor} if cursor else {}),
                             headers=world.auth["bob"]).json()
        seen += [j["id"] for j in r["jobs"]]
        cursor = r["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted([world.b_job, *extra], reverse=True)


def test_an_admin_acts_on_other_owners_jobs(world: World) -> None:
    job = world.client.post("/v1/jobs", json=TRAIN | {"seed": 7}, headers=world.auth["bob"]).json()["id"]
    r = world.client.post(f"/v1/jobs/{job}/cancel", headers=world.auth["root"])
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert world.client.get(f"/v1/jobs/{job}", headers=world.auth["bob"]).json()["status"] == "cancelled"


def test_a_token_named_like_another_owner_is_refused_unless_made_deliberately(world: World) -> None:
    """Issue 19 (10): owner identity is a principal's id, not a token's name. A token created with
    an existing owner's name (a non-admin "root", a second "alice") is refused; only the explicit
    ``existing_owner`` act gives an owner another token, which then shares that owner's jobs."""
    from service.auth import principals

    for name in ("root", "alice"):
        plain = generate_token()
        with world.app.state.session_factory() as s, pytest.raises(principals.OwnerExists, match=name):
            tokens.create_api_token(s, name, plain)
        assert world.client.get(f"/v1/jobs/{world.a_job}", headers=_auth(plain)).status_code == 401
    second = generate_token()
    with world.app.state.session_factory() as s:
        row = tokens.create_api_token(s, "alice", second, existing_owner=True)
        first = s.scalars(select(ApiToken).where(ApiToken.name == "alice").order_by(ApiToken.id)).first()
        assert first is not None and row.principal_id == first.principal_id and row.id != first.id
    r = world.client.get(f"/v1/jobs/{world.a_job}", headers=_auth(second))
    assert r.status_code == 200 and r.json()["id"] == world.a_job
    with world.app.state.session_factory() as s, pytest.raises(principals.NoSuchOwner):
        tokens.create_api_token(s, "nobody-yet", generate_token(), existing_owner=True)


def test_a_token_s_name_decides_nothing(world: World) -> None:
    """A token row that merely *says* "alice" (its name) but belongs to another principal reads
    none of alice's jobs: tenancy compares principal ids."""
    plain = generate_token()
    with world.app.state.session_factory() as s:
        mallory = tokens.create_api_token(s, "mallory", plain)
        s.execute(update(ApiToken).where(ApiToken.id == mallory.id).values(name="alice"))
        s.commit()
    assert world.client.get(f"/v1/jobs/{world.a_job}", headers=_auth(plain)).status_code == 404
    listed = world.client.get("/v1/jobs", headers=_auth(plain)).json()["jobs"]
    assert listed == []


def test_submission_cannot_start_from_another_owner_s_checkpoint(world: World) -> None:
    src = world.client.post("/v1/jobs", json=TRAIN | {"seed": 3}, headers=world.auth["alice"]).json()["id"]
    with world.app.state.session_factory() as s:
        s.execute(update(Job).where(Job.id == src).values(status="succeeded"))
        s.commit()
    bodies = [{"kind": "finetune", "model": "small-cnn", "init_from": {"job_id": src}, "epochs": 1},
              {"kind": "eval", "job_id": src, "n": 10}]
    for body in bodies:
        theirs = world.client.post("/v1/jobs", json=body, headers=world.auth["bob"])
        assert theirs.status_code == 422 and f"job {src} does not exist" in theirs.text, theirs.text
        absent = body | ({"init_from": {"job_id": MISSING}} if "init_from" in body else {"job_id": MISSING})
        gone = world.client.post("/v1/jobs", json=absent, headers=world.auth["bob"])
        assert theirs.text == gone.text.replace(str(MISSING), str(src))  # indistinguishable
        mine = world.client.post("/v1/jobs", json=body, headers=world.auth["alice"])
        assert mine.status_code == 201 and mine.json()["spec"]["source_job_id"] == src, mine.text


def test_jobs_record_their_owner_and_token(world: World) -> None:
    from service.auth import principals

    with world.app.state.session_factory() as s:
        a = s.get(Job, world.a_job)
        b = s.get(Job, world.b_job)
        assert a is not None and b is not None
        owners = principals.names(s, {a.owner_id, b.owner_id})
        assert (owners[a.owner_id], owners[b.owner_id]) == ("alice", "bob") and a.token_id != b.token_id


def test_idempotent_replays_stay_within_their_owner(world: World) -> None:
    def post(who: str, key: str, body: dict[str, Any] = TRAIN) -> Any:
        return world.client.post("/v1/jobs", json=body, headers=world.auth[who] | {"Idempotency-Key": key})

    a = post("alice", "same-key")
    b = post("bob", "same-key")
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]
    again = post("alice", "same-key")
    assert again.status_code == 200 and again.json()["id"] == a.json()["id"]
    # A scope holding another owner's job (a shared or re-used scope): refused, and nothing named.
    with world.app.state.session_factory() as s:
        bob_scope = s.scalar(select(Job.token_id).where(Job.id == world.b_job))
        s.add(IdempotencyKey(scope=bob_scope, key="planted", request_hash="x", job_id=world.a_job))
        s.commit()
    r = post("bob", "planted")
    assert r.status_code == 409 and str(world.a_job) not in r.text and "job_id" not in r.json(), r.text


def test_owned_job_and_the_listing_filter_agree(world: World) -> None:
    """The rule the UI's data layer calls, without HTTP."""
    from service.auth import principals

    with world.app.state.session_factory() as s:
        ids = {name: principals.find(s, name).id for name in ("alice", "bob", "root")}  # type: ignore[union-attr]
        alice, root = Principal(owner_id=ids["alice"]), Principal(owner_id=ids["root"], is_admin=True)
        nobody = Principal(owner_id=None)
        assert owned_job(s, alice, world.a_job).id == world.a_job
        assert owned_job(s, root, world.b_job).id == world.b_job
        with pytest.raises(store.JobNotFound, match=f"job {world.b_job} not found"):
            owned_job(s, alice, world.b_job)
        jobs, _ = store.list_jobs(s, principal=alice, limit=200)
        assert jobs and {j.owner_id for j in jobs} == {ids["alice"]}
        everything, _ = store.list_jobs(s, principal=root, limit=200)
        assert {ids["alice"], ids["bob"]} <= {j.owner_id for j in everything}
        assert all(alice.can_see(j) == (j.owner_id == ids["alice"]) for j in everything)
        assert store.list_jobs(s, principal=nobody, limit=200)[0] == []
        assert not any(nobody.can_see(j) for j in everything)
