"""Sweeps through the API and the database (no Ray): validation, the trial rows created at
submission, trial events from the driver, the best trial, cancel, retry, and finetune / eval jobs
starting from a trial's checkpoint. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.events import store as events
from service.jobs import store, transitions
from workers.contract.sweep import SweepSpec

BASE = {"method": "ramp", "dataset": "mnist-5k", "epochs": 2, "max_steps": 4, "train_n": 64,
        "batch_size": 32, "monitor_n": 16, "eval_n": 16, "checks_n": 0, "seed": 3}
SWEEP = {
    "kind": "sweep",
    "base": BASE,
    "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}, "epsilons.l1": {"grid": [8, 12]}},
    "num_samples": 1, "metric": "union", "mode": "max", "max_concurrent_trials": 2, "scheduler": None,
}
GRID = [(0.5, 8), (0.5, 12), (5, 8), (5, 12)]  # the first key varies slowest
SWEEP_START = {"event": "sweep_start",
               "trials": [{"trial_id": f"trial_000{i}", "index": i} for i in range(4)]}


@pytest.fixture(params=["sqlite", "postgresql"])
def any_api(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield request.getfixturevalue("api" if request.param == "sqlite" else "pg_api")


def submit(api: Any, body: dict[str, Any], **headers: str) -> Any:
    return api.client.post("/v1/jobs", json=body, headers=api.auth | headers)


def trials(api: Any, job_id: int, **params: Any) -> dict[str, Any]:
    r = api.client.get(f"/v1/jobs/{job_id}/trials", params=params, headers=api.auth)
    assert r.status_code == 200, r.text
    return r.json()


class Driver:
    """What a sweep's job driver sends: numbered events and its final status, with its token."""

    def __init__(self, api: Any, job_id: int, token: str, attempt: int = 1) -> None:
        self.api, self.job_id, self.attempt, self.seq = api, job_id, attempt, 0
        self.headers = {"Authorization": f"Bearer {token}"}

    def post(self, *events: dict[str, Any], seqs: list[int] | None = None) -> None:
        if seqs is None:
            seqs = list(range(self.seq, self.seq + len(events)))
            self.seq += len(events)
        batch = [{"seq": s, "type": "trial", "data": e, "attempt": self.attempt}
                 for s, e in zip(seqs, events, strict=True)]
        r = self.api.client.post(f"/internal/jobs/{self.job_id}/events", json={"events": batch},
                                 headers=self.headers)
        assert r.status_code == 200, r.text

    def status(self, status: str, **extra: Any) -> Any:
        return self.api.client.post(f"/internal/jobs/{self.job_id}/status",
                                    json={"status": status, **extra}, headers=self.headers)


def epoch(trial_id: str, n: int, union: float, checkpoint: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {"event": "trial_result", "trial_id": trial_id, "epoch": n,
                            "metrics": {"epoch": n, "epochs": 2, "union": union, "clean": union + 0.2,
                                        "loss_ce": 1.0 / n}}
    if checkpoint:
        data["checkpoint"] = f"trials/{trial_id}/checkpoint"
    return data


def run_trials(driver: Driver, unions: dict[str, list[float]]) -> None:
    """Each trial: start, one result per epoch (unions), then end."""
    for tid, values in unions.items():
        driver.post({"event": "trial_start", "trial_id": tid, "tune_trial_id": f"t-{tid}"})
        driver.post(*(epoch(tid, i + 1, u) for i, u in enumerate(values)))
        final = {"clean": 0.9, "linf": 0.5, "l2": 0.6, "l1": 0.4, "union": values[-1], "n": 16}
        driver.post({"event": "trial_end", "trial_id": tid, "status": "succeeded", "final": final,
                     "checkpoint": f"trials/{tid}/checkpoint"})


def make_running(api: Any, job_id: int, driver_token: Any) -> Driver:
    with api.sessions()() as s:
        transitions.claim_queued_jobs(s, limit=10, claimer="test")
        transitions.transition(s, job_id, "running")
    return Driver(api, job_id, driver_token(api.app, job_id))


# ----------------------------------------------------------------------------------- submission


def test_submitting_a_sweep_stores_it_and_creates_its_trials(any_api: Any) -> None:
    r = submit(any_api, SWEEP)
    assert r.status_code == 201, r.text
    job = r.json()
    spec = job["spec"]
    assert job["kind"] == "sweep" and job["status"] == "queued"
    assert spec["num_trials"] == 4 and spec["seed"] == 3  # the sampling seed defaults to base.seed
    assert spec["base"]["kind"] == "train" and spec["base"]["resources"]["num_workers"] == 1
    assert spec["param_space"] == SWEEP["param_space"] and spec["max_retries"] == 0
    listing = trials(any_api, job["id"])
    assert listing["param_keys"] == ["params.ramp.lambda", "epsilons.l1"]
    assert listing["best_trial_id"] is None and listing["metric"] == "union" and listing["mode"] == "max"
    rows = listing["trials"]
    assert [t["trial_id"] for t in rows] == [f"trial_000{i}" for i in range(4)]
    assert [(t["config"]["params.ramp.lambda"], t["config"]["epsilons.l1"]) for t in rows] == GRID
    for t, (lam, eps1) in zip(rows, GRID, strict=True):
        assert t["status"] == "pending" and t["metrics"] == [] and t["score"] is None
        # The trial's own spec: the override applied, every default filled in.
        assert t["spec"]["params"]["ramp.lambda"] == lam and t["spec"]["epsilons"]["l1"] == eps1
        assert t["spec"]["epsilons"]["linf"] == 0.3 and t["spec"]["model"] == "small-cnn"
    # Listed under the base's method; the sweep's method filter finds it.
    listed = any_api.client.get("/v1/jobs", params={"kind": "sweep", "method": "ramp"}, headers=any_api.auth)
    assert [j["id"] for j in listed.json()["jobs"]] == [job["id"]]


def test_random_search_samples_reproducibly(api: Any) -> None:
    body = SWEEP | {"param_space": {"lr": {"uniform": [0.01, 0.1]}, "params.gp.beta": {"choice": [0.1, 0.9]}},
                    "num_samples": 5}
    first = trials(api, submit(api, body).json()["id"])["trials"]
    again = trials(api, submit(api, body).json()["id"])["trials"]
    lrs = [t["config"]["lr"] for t in first]
    assert len(first) == 5 and lrs == [t["config"]["lr"] for t in again]
    assert all(0.01 <= lr <= 0.1 for lr in lrs) and len(set(lrs)) == 5
    assert {t["config"]["params.gp.beta"] for t in first} <= {0.1, 0.9}
    assert [t["spec"]["lr"] for t in first] == lrs


def test_the_driver_gets_exactly_the_runners_spec(api: Any, driver_token: Any) -> None:
    job_id = submit(api, SWEEP | {"scheduler": {"type": "asha", "grace_period": 1}}).json()["id"]
    token = driver_token(api.app, job_id)
    r = api.client.get(f"/internal/jobs/{job_id}/spec", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    info = r.json()
    sweep = SweepSpec.model_validate(info["work_spec"])
    assert sweep.scheduler is not None and sweep.scheduler.reduction_factor == 2
    stored = trials(api, job_id)["trials"]
    expected = [(t.trial_id, t.overrides) for t in sweep.trials()]
    assert expected == [(t["trial_id"], t["config"]) for t in stored]


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"base": {**BASE, "method": "rmap"}}, "body.base.method", "unknown method 'rmap'"),
        ({"base": {**BASE, "epochs": "2"}}, "body.base.epochs", "valid integer"),
        ({"base": {**BASE, "kind": "eval"}}, "body.base.kind", "train or finetune"),
        ({"base": {**BASE, "max_retries": 2}}, "body.base.max_retries", "whole sweep"),
        ({"base": [1]}, "body.base", "train or finetune job spec"),
        ({"param_space": {}}, "body.param_space", "at least 1 item"),
        ({"param_space": {"lambda": {"grid": [1]}}}, "body.param_space.lambda", "unknown field 'lambda'"),
        ({"param_space": {"params.ramp.lambda": {"grid": [-1]}}}, "body.param_space.params.ramp.lambda",
         "must be >= 0"),
        ({"param_space": {"params.trades.beta": {"grid": [1]}}}, "body.param_space.params.trades.beta",
         "does not apply to method 'ramp'"),
        ({"param_space": {"epsilons.l1": {"grid": [0]}}}, "body.param_space.epsilons.l1", "must be positive"),
        ({"param_space": {"epsilons.l5": {"grid": [1]}}}, "body.param_space.epsilons.l5", "unknown norm"),
        ({"param_space": {"epochs": {"grid": ["3"]}}}, "body.param_space.epochs", "valid integer"),
        ({"param_space": {"lr": {"uniform": [0.1, 0.01]}}}, "body.param_space.lr", "low < high"),
        ({"param_space": {"lr": {"grid": [0.1], "uniform": [0.1, 0.2]}}}, "body.param_space.lr",
         "exactly one of"),
        ({"param_space": {"seed": {"grid": list(range(40))}, "epochs": {"grid": list(range(1, 31))}}},
         "body.param_space", "at most 1000"),
        ({"num_samples": 0}, "body.num_samples", "greater than or equal to 1"),
        ({"metric": "accuracy"}, "body.metric", "unknown metric 'accuracy'"),
        ({"mode": "best"}, "body.mode", "'max' or 'min'"),
        ({"max_concurrent_trials": 0}, "body.max_concurrent_trials", "greater than or equal to 1"),
        ({"scheduler": {"type": "hyperband"}}, "body.scheduler.type", "'asha'"),
        ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "body.scheduler.reduction_factor",
         "greater than 1"),
        ({"base": {**BASE, "monitor_n": 0}}, "body.metric", "monitor_n = 0"),
        ({"max_retries": 11}, "body.max_retries", "less than or equal to 10"),
        ({"trials": 3}, "body.trials", "Extra inputs"),
    ],
)
def test_invalid_sweeps_are_422_naming_the_field(api: Any, patch: dict, field: str, reason: str) -> None:
    r = submit(api, SWEEP | patch)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["field"] == field and reason in e["msg"] for e in errors), errors


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=12,
)
_domains = st.dictionaries(
    st.sampled_from(["grid", "choice", "uniform", "loguniform", "randint", "other"]), _json, max_size=2
)
_keys = st.sampled_from(["lr", "seed", "epochs", "epsilons.l1", "epsilons.l9", "params.ramp.lambda",
                         "params.gp.beta", "params.", "model_args.width", "resources.num_workers", ""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(space=st.dictionaries(_keys, _domains | _json, max_size=3), extra=st.dictionaries(
    st.sampled_from(["num_samples", "metric", "mode", "max_concurrent_trials", "scheduler", "seed"]),
    _json, max_size=2))
def test_random_sweep_bodies_never_500(api: Any, space: dict, extra: dict) -> None:
    r = submit(api, SWEEP | {"param_space": space} | extra)
    assert r.status_code in (201, 422), r.text
    if r.status_code == 201:
        assert trials(api, r.json()["id"])["trials"]


# ------------------------------------------------------------------------------ trial reports


def test_trial_events_record_metrics_status_and_the_best_trial(any_api: Any, driver_token: Any) -> None:
    job_id = submit(any_api, SWEEP).json()["id"]
    driver = make_running(any_api, job_id, driver_token)
    driver.post(SWEEP_START)
    # trial_0002 is best by its LAST epoch (0.5), although trial_0001 peaked higher (0.7).
    run_trials(driver, {"trial_0000": [0.1, 0.2], "trial_0001": [0.7, 0.3], "trial_0002": [0.4, 0.5]})
    driver.post({"event": "trial_start", "trial_id": "trial_0003"}, epoch("trial_0003", 1, 0.9, False))
    listing = trials(any_api, job_id)
    rows = {t["trial_id"]: t for t in listing["trials"]}
    assert [rows[t]["status"] for t in sorted(rows)] == ["succeeded"] * 3 + ["running"]
    assert [m["union"] for m in rows["trial_0001"]["metrics"]] == [0.7, 0.3]
    assert rows["trial_0001"]["score"] == 0.3 and rows["trial_0001"]["final"]["union"] == 0.3
    assert rows["trial_0002"]["checkpoint"] == "trials/trial_0002/checkpoint"
    assert rows["trial_0003"]["checkpoint"] is None and rows["trial_0003"]["started_at"] is not None
    # A running trial counts with what it reported so far.
    assert listing["best_trial_id"] == "trial_0003" and listing["best_score"] == 0.9
    driver.post({"event": "trial_end", "trial_id": "trial_0003", "status": "failed", "error": "boom"})
    assert trials(any_api, job_id)["trials"][3]["error"] == "boom"
    # The listing without histories, and one trial alone.
    light = trials(any_api, job_id, history="false")
    assert all(t["metrics"] is None for t in light["trials"]) and light["best_trial_id"] == "trial_0003"
    one = any_api.client.get(f"/v1/jobs/{job_id}/trials/trial_0002", headers=any_api.auth).json()
    assert [m["epoch"] for m in one["metrics"]] == [1, 2] and one["config"] == {
        "params.ramp.lambda": 5, "epsilons.l1": 8}
    # Trial events are stored as events of the sweep too (the audit trail).
    evs = any_api.client.get(f"/v1/jobs/{job_id}/events", params={"type": "trial", "limit": 1000},
                             headers=any_api.auth).json()["events"]
    assert len(evs) == driver.seq


def test_minimising_and_ties(api: Any, driver_token: Any) -> None:
    job_id = submit(api, SWEEP | {"metric": "loss_ce", "mode": "min"}).json()["id"]
    driver = make_running(api, job_id, driver_token)
    run_trials(driver, {"trial_0000": [0.3], "trial_0001": [0.3, 0.2]})  # loss_ce = 1/epoch
    assert trials(api, job_id)["best_trial_id"] == "trial_0001"  # 0.5 < 1.0
    job2 = submit(api, SWEEP).json()["id"]
    driver2 = make_running(api, job2, driver_token)
    run_trials(driver2, {"trial_0002": [0.25], "trial_0001": [0.25], "trial_0003": [0.1]})
    assert trials(api, job2)["best_trial_id"] == "trial_0001"  # a tie goes to the earliest trial


def test_resent_and_stale_events_change_nothing(any_api: Any, driver_token: Any) -> None:
    job_id = submit(any_api, SWEEP).json()["id"]
    driver = make_running(any_api, job_id, driver_token)
    driver.post({"event": "trial_start", "trial_id": "trial_0000"}, epoch("trial_0000", 1, 0.2))
    before = trials(any_api, job_id)["trials"][0]
    driver.post({"event": "trial_start", "trial_id": "trial_0000"}, epoch("trial_0000", 1, 0.2), seqs=[0, 1])
    # The same epoch under a new seq (a re-delivery by another path) replaces, never duplicates.
    driver.post(epoch("trial_0000", 1, 0.2))
    after = trials(any_api, job_id)["trials"][0]
    assert after["metrics"] == before["metrics"] and len(after["metrics"]) == 1
    # Garbage in a trial event is stored as an event but touches no trial.
    driver.post({"event": "trial_end", "trial_id": "trial_0000", "status": "exploded"},
                {"event": "nonsense"}, {"trial_id": 7}, {"event": "trial_result", "trial_id": "trial_0000"})
    assert trials(any_api, job_id)["trials"][0]["status"] == "running"


def test_cancelling_a_sweep_closes_its_open_trials(any_api: Any, driver_token: Any) -> None:
    queued = submit(any_api, SWEEP).json()["id"]
    r = any_api.client.post(f"/v1/jobs/{queued}/cancel", headers=any_api.auth)
    assert r.json()["status"] == "cancelled"
    assert {t["status"] for t in trials(any_api, queued)["trials"]} == {"cancelled"}

    job_id = submit(any_api, SWEEP).json()["id"]
    driver = make_running(any_api, job_id, driver_token)
    run_trials(driver, {"trial_0000": [0.2, 0.3]})
    driver.post({"event": "trial_start", "trial_id": "trial_0001"})
    r = any_api.client.post(f"/v1/jobs/{job_id}/cancel", headers=any_api.auth)
    assert r.json()["status"] == "cancelling"
    assert trials(any_api, job_id)["trials"][1]["status"] == "running"  # not yet: Ray stops it first
    with any_api.sessions()() as s:
        transitions.transition(s, job_id, "cancelled", reason="Ray job STOPPED after stop")
    statuses = [t["status"] for t in trials(any_api, job_id)["trials"]]
    assert statuses == ["succeeded", "cancelled", "cancelled", "cancelled"]


def test_a_failed_sweep_fails_its_open_trials_and_a_retry_starts_them_afresh(
    api: Any, driver_token: Any
) -> None:
    job_id = submit(api, SWEEP).json()["id"]
    driver = make_running(api, job_id, driver_token)
    run_trials(driver, {"trial_0000": [0.2]})
    driver.post({"event": "trial_start", "trial_id": "trial_0001"})
    assert driver.status("failed", error="driver crashed").status_code == 200
    rows = trials(api, job_id)["trials"]
    assert rows[0]["status"] == "succeeded"
    assert rows[1]["status"] == "failed" and "before this trial finished" in rows[1]["error"]
    assert api.client.post(f"/v1/jobs/{job_id}/retry", headers=api.auth).json()["attempt"] == 2
    driver2 = make_running(api, job_id, driver_token)
    driver2.attempt = 2
    driver2.post(SWEEP_START)
    rows = trials(api, job_id)["trials"]
    assert all(t["status"] == "pending" and t["attempt"] == 2 and t["metrics"] == [] for t in rows)
    # A straggler of attempt 1 (its spool, ingested by the dispatcher) must not touch attempt 2.
    with api.sessions()() as s:
        events.add_events(s, job_id, [{"seq": 99, "type": "trial", "attempt": 1,
                                           "data": epoch("trial_0000", 2, 0.9)}])
    assert trials(api, job_id)["trials"][0]["metrics"] == []


def test_trials_of_what_is_not_a_sweep_are_404(api: Any) -> None:
    train = submit(api, BASE | {"kind": "train"}).json()["id"]
    r = api.client.get(f"/v1/jobs/{train}/trials", headers=api.auth)
    assert r.status_code == 404 and "not a sweep" in r.json()["detail"]
    sweep = submit(api, SWEEP).json()["id"]
    assert api.client.get(f"/v1/jobs/{sweep}/trials/trial_0099", headers=api.auth).status_code == 404
    assert api.client.get("/v1/jobs/999999/trials", headers=api.auth).status_code == 404
    assert api.client.get(f"/v1/jobs/{sweep}/trials").status_code == 401


# ------------------------------------------------------------------- starting from a trial


def test_finetune_and_eval_start_from_a_trials_checkpoint(any_api: Any, driver_token: Any) -> None:
    sweep = submit(any_api, SWEEP).json()["id"]
    job_dir = any_api.settings.job_dir(sweep)
    finetune = {"kind": "finetune", "method": "ramp", "model": "small-cnn", "epochs": 1,
                "init_from": {"job_id": sweep, "trial": "trial_0001"}}

    def rejected(body: dict[str, Any], field: str, reason: str) -> None:
        r = submit(any_api, body)
        assert r.status_code == 422, r.text
        assert any(e["field"] == field and reason in e["msg"] for e in r.json()["detail"]), r.text

    rejected(finetune, "body.init_from.trial", "trial_0001 of sweep")  # still pending
    driver = make_running(any_api, sweep, driver_token)
    run_trials(driver, {"trial_0001": [0.3, 0.6], "trial_0002": [0.2, 0.4]})
    driver.post({"event": "trial_start", "trial_id": "trial_0003"})

    r = submit(any_api, finetune)
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["init_from"] == str(job_dir / "trials" / "trial_0001" / "checkpoint")
    assert spec["source_job_id"] == sweep and spec["source_trial"] == "trial_0001"
    r = submit(any_api, {"kind": "eval", "job_id": sweep, "trial": "trial_0002", "n": 8})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["checkpoint"] == str(job_dir / "trials" / "trial_0002" / "checkpoint")

    rejected(finetune | {"init_from": {"job_id": sweep, "trial": "trial_0003"}}, "body.init_from.trial",
             "running")
    rejected(finetune | {"init_from": {"job_id": sweep, "trial": "trial_9"}}, "body.init_from.trial",
             "has no trial 'trial_9'")
    rejected(finetune | {"init_from": {"job_id": sweep}}, "body.init_from.job_id", "once it succeeded")
    rejected({"kind": "eval", "checkpoint": "/x", "trial": "trial_0001"}, "body", "'trial' names a trial")
    train = submit(any_api, BASE | {"kind": "train"}).json()["id"]
    rejected({"kind": "eval", "job_id": train, "trial": "trial_0001"}, "body.trial",
             "names a trial of a sweep")
    rejected(finetune | {"init_from": {"job_id": sweep, "trial": "../x"}}, "body.init_from.trial", "pattern")

    # Once the sweep succeeded, the sweep alone means its best trial (the driver's verdict).
    driver.post({"event": "trial_end", "trial_id": "trial_0003", "status": "stopped"})
    r = driver.status("succeeded", metrics={"best_trial_id": "trial_0001", "union": 0.6})
    assert r.status_code == 200, r.text
    r = submit(any_api, finetune | {"init_from": {"job_id": sweep}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["source_trial"] == "trial_0001"
    # A sweep can start from a trial of another sweep.
    init = {"job_id": sweep, "trial": "trial_0002"}
    child = SWEEP | {"base": BASE | {"kind": "finetune", "model": "small-cnn", "init_from": init}}
    r = submit(any_api, child)
    assert r.status_code == 201, r.text
    stored = r.json()["spec"]
    assert stored["base"]["init_from"].endswith("trials/trial_0002/checkpoint")
    assert stored["source_job_id"] == sweep and stored["source_trial"] == "trial_0002"
    assert trials(any_api, r.json()["id"])["trials"][0]["spec"]["init_from"] == stored["base"]["init_from"]


def test_the_best_trial_is_computed_when_the_result_does_not_name_it(api: Any, driver_token: Any) -> None:
    sweep = submit(api, SWEEP).json()["id"]
    driver = make_running(api, sweep, driver_token)
    run_trials(driver, {"trial_0000": [0.1], "trial_0003": [0.8]})
    assert driver.status("succeeded", metrics={"union": 0.8}).status_code == 200
    r = submit(api, {"kind": "eval", "job_id": sweep})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["source_trial"] == "trial_0003"


def test_idempotent_sweep_submission_makes_one_set_of_trials(api: Any) -> None:
    first = submit(api, SWEEP, **{"Idempotency-Key": "sweep-1"})
    again = submit(api, SWEEP, **{"Idempotency-Key": "sweep-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert len(trials(api, first.json()["id"])["trials"]) == 4
    conflict = submit(api, SWEEP | {"num_samples": 2}, **{"Idempotency-Key": "sweep-1"})
    assert conflict.status_code == 409
    with api.sessions()() as s:
        assert store.list_jobs(s, kind="sweep")[0][0].id == first.json()["id"]
    assert json.loads(json.dumps(first.json()["spec"])) == first.json()["spec"]
