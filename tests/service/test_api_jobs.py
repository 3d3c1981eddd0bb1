"""POST/GET /v1/jobs, cancel, retry: validation, resolved specs, idempotency, pagination, 404/409."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from error_support import detail_text

from service.jobs import transitions
from workers.contract.spec import TrainSpec

TRAIN = {
    "kind": "train", "method": "ramp", "dataset": "mnist-5k", "model": "small-cnn", "epochs": 1,
    "max_steps": 20, "seed": 0, "epsilons": {"linf": 0.3, "l2": 2.0, "l1": 10},
    "params": {"ramp.lambda": 5, "gp.beta": 0.5},
    "resources": {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": False}, "max_retries": 0,
}


def _submit(api, body: dict, **headers: str) -> httpx.Response:
    return api.client.post("/v1/jobs", json=body, headers=api.auth | headers)


def _finish(api, job_id: int, status: str = "succeeded") -> None:
    with api.sessions()() as s:
        transitions.claim_queued_jobs(s, limit=100, claimer="test")
        transitions.transition(s, job_id, status)


def test_submit_stores_the_resolved_spec_and_get_returns_it(api) -> None:
    r = _submit(api, TRAIN)
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempt"] == 1 and job["kind"] == "train"
    spec = job["spec"]
    # Defaults filled in exactly as the CLI's TrainSpec.resolve() fills them.
    expected = TrainSpec(**{k: v for k, v in TRAIN.items() if k in TrainSpec.model_fields}).resolve()
    assert {k: spec[k] for k in TrainSpec.model_fields} == expected.model_dump(mode="json")
    assert spec["batch_size"] == 128 and spec["params"]["ramp.q"] == "linf"
    assert spec["resources"] == {"num_workers": 1, "cpus_per_worker": 1.0, "use_gpu": False}
    got = api.client.get(f"/v1/jobs/{job['id']}", headers=api.auth).json()
    assert got["spec"] == spec and got["timings"]["queued_at"] is not None
    assert got["metrics"] is None and got["ray_dashboard_url"] is None


def test_a_minimal_spec_gets_every_default(api) -> None:
    spec = _submit(api, {"kind": "train"}).json()["spec"]
    assert spec["method"] == "ramp" and spec["dataset"] == "mnist-5k" and spec["epochs"] == 10
    assert spec["epsilons"] == {"linf": 0.3, "l2": 2.0, "l1": 10.0} and spec["max_retries"] == 0


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"method": "rmap"}, "body.method", "unknown method 'rmap'; available: nt"),
        ({"dataset": "imagenet-21k"}, "body.dataset", "unknown dataset"),
        ({"model": "vit"}, "body.model", "unknown model 'vit'"),
        ({"epochs": 5000}, "body.epochs", "less than or equal to 1000"),
        ({"batch_size": 100000}, "body.batch_size", "less than or equal to 4096"),
        ({"epsilons": {"linf": 0}}, "body.epsilons", "must be positive"),
        ({"epsilons": {"l3": 1}}, "body.epsilons", "unknown norm 'l3'"),
        ({"resources": {"num_workers": 65}}, "body.resources.num_workers", "less than or equal to 64"),
        ({"resources": {"num_workers": 1, "gpus": 2}}, "body.resources.gpus", "Extra inputs"),
        ({"max_retries": -1}, "body.max_retries", "greater than or equal to 0"),
        ({"max_retries": 11}, "body.max_retries", "less than or equal to 10"),
        ({"params": {"ramp.lambda": "big"}}, "body.params.ramp.lambda", "expects a number"),
        ({"params": {"trades.beta": 1}}, "body.params.trades.beta", "does not apply to method 'ramp'"),
        ({"kind": "bake"}, "body.kind", "unknown kind 'bake'; available: train, finetune, eval, sweep"),
        ({"init_from": "/ckpt"}, "body", "only valid for kind 'finetune'"),
        ({"epochs": "many"}, "body.epochs", "valid integer"),
        ({"surprise": 1}, "body.surprise", "Extra inputs are not permitted"),
        ({"train_precision": "fp8"}, "body.train_precision", "unknown train_precision 'fp8'"),
        ({"compile": "sometimes"}, "body.compile", "valid boolean"),
    ],
)
def test_invalid_specs_are_422_naming_the_field(api, patch: dict, field: str, reason: str) -> None:
    r = _submit(api, TRAIN | patch)
    assert r.status_code == 422, r.text
    body = r.json()
    assert any(e["field"] == field and reason in e["msg"] for e in body["detail"]), body
    assert field in detail_text(r)


def test_finetune_from_a_job_resolves_its_checkpoint_and_requires_success(api) -> None:
    src = _submit(api, TRAIN).json()["id"]
    r = _submit(api, {"kind": "finetune", "init_from": {"job_id": src}, "epochs": 1})
    assert r.status_code == 422 and "is queued" in detail_text(r)
    assert r.json()["detail"][0]["field"] == "body.init_from.job_id"
    _finish(api, src)
    # No model named: the checkpoint's, from its meta.json; without readable metadata, name it.
    r = _submit(api, {"kind": "finetune", "init_from": {"job_id": src}, "epochs": 1})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.model", r.text
    ckpt = api.settings.job_dir(src) / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"model": "wrn", "model_args": {"depth": 10}}))
    r = _submit(api, {"kind": "finetune", "init_from": {"job_id": src}, "epochs": 1})
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["init_from"] == str(ckpt) and spec["source_job_id"] == src
    assert spec["model"] == "wrn" and spec["model_args"] == {"depth": 10}
    assert spec["lr"] == 0.05 and spec["params"]["ramp.lambda"] == 1.5  # fine-tuning defaults
    assert spec["params"]["gp.enabled"] is False
    r = _submit(api, {"kind": "finetune", "model": "small-cnn", "init_from": {"checkpoint": "/data/ckpt"}})
    assert r.status_code == 201 and r.json()["spec"]["init_from"] == "/data/ckpt"
    r = _submit(api, {"kind": "finetune", "init_from": {"job_id": 9999}})
    assert r.status_code == 422 and "job 9999 does not exist" in detail_text(r)
    r = _submit(api, {"kind": "finetune"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.init_from"


def test_eval_takes_a_checkpoint_or_a_succeeded_training_job(api) -> None:
    src = _submit(api, TRAIN).json()["id"]
    _finish(api, src)
    r = _submit(api, {"kind": "eval", "job_id": src, "suite": "monitor", "n": 100})
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["checkpoint"] == str(api.settings.job_dir(src) / "checkpoint")
    assert spec["n"] == 100 and spec["batch_size"] == 256 and "job_id" not in spec
    eval_id = r.json()["id"]
    _finish(api, eval_id)
    r = _submit(api, {"kind": "eval", "job_id": eval_id})
    assert r.status_code == 422 and "eval job" in detail_text(r)
    assert _submit(api, {"kind": "eval", "checkpoint": "/c", "job_id": src}).status_code == 422
    assert _submit(api, {"kind": "eval"}).status_code == 422
    r = _submit(api, {"kind": "eval", "checkpoint": "/c", "suite": ["apgd", "nope"]})
    assert r.status_code == 422 and "unknown attack(s) nope" in detail_text(r)


def test_idempotency_key_replays_and_conflicts(api) -> None:
    first = _submit(api, TRAIN, **{"Idempotency-Key": "abc-1"})
    again = _submit(api, TRAIN, **{"Idempotency-Key": "abc-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = _submit(api, TRAIN | {"seed": 1}, **{"Idempotency-Key": "abc-1"})
    assert other.status_code == 409 and "different request body" in other.json()["detail"]
    assert other.json()["job_id"] == first.json()["id"]
    assert _submit(api, TRAIN, **{"Idempotency-Key": "x" * 300}).status_code == 400
    listed = api.client.get("/v1/jobs", headers=api.auth).json()["jobs"]
    assert len(listed) == 1


def test_idempotent_submissions_racing_over_http_make_one_job(live_server) -> None:
    ids: list[int] = []
    codes: list[int] = []
    barrier = threading.Barrier(6)

    def post() -> None:
        with httpx.Client(base_url=live_server.url, headers=live_server.auth, timeout=30) as c:
            barrier.wait()
            r = c.post("/v1/jobs", json=TRAIN, headers={"Idempotency-Key": "race-1"})
            codes.append(r.status_code)
            ids.append(r.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and sorted(codes) == [200] * 5 + [201]
    listed = httpx.get(f"{live_server.url}/v1/jobs", headers=live_server.auth).json()["jobs"]
    assert [j["id"] for j in listed] == ids[:1]


def test_list_filters_and_paginates_newest_first(api) -> None:
    methods = ["ramp", "eat", "ramp", "msd"]
    ids = [_submit(api, TRAIN | {"method": m, "params": {}}).json()["id"] for m in methods]
    api.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=api.auth)
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.client.get("/v1/jobs", params=params, headers=api.auth).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    get = lambda **p: [j["id"] for j in api.client.get("/v1/jobs", params=p, headers=api.auth).json()["jobs"]]  # noqa: E731
    assert get(method="ramp") == [ids[2], ids[0]]
    assert get(status="cancelled") == [ids[0]]
    assert get(status="queued,cancelled", kind="train") == ids[::-1]
    assert get(kind="eval") == []
    r = api.client.get("/v1/jobs", params={"status": "paused"}, headers=api.auth)
    assert r.status_code == 422 and "unknown status 'paused'" in detail_text(r)
    assert api.client.get("/v1/jobs", params={"cursor": "%%%"}, headers=api.auth).status_code == 400
    assert api.client.get("/v1/jobs", params={"limit": 0}, headers=api.auth).status_code == 422


def test_the_list_carries_a_summary_and_the_job_its_whole_self(api) -> None:
    job_id = _submit(api, TRAIN).json()["id"]
    result = {"clean": 0.9, "union": 0.4, "suite": "monitor", "n": 100,
              "curves": {"linf": [[0.1, 0.5]] * 50}, "checks": {"warnings": []}}
    with api.sessions()() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="t")
        transitions.transition(s, job_id, "running", ray_job_id="raysubmit_9")
        transitions.transition(s, job_id, "succeeded", result=result)
    full = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth).json()
    (row,) = api.client.get("/v1/jobs", headers=api.auth).json()["jobs"]
    assert "spec" not in row and row["metrics"] == {"clean": 0.9, "union": 0.4, "suite": "monitor", "n": 100}
    assert (row["method"], row["dataset"], row["model"]) == ("ramp", "mnist-5k", "small-cnn")
    # What a reader must be told is in the summary too (monitor: an upper bound).
    assert row["warnings"] == full["warnings"] and "upper bound" in row["warnings"][0]
    for key in ("id", "kind", "status", "attempt", "max_retries", "progress", "error", "ray_job_id",
                "ray_dashboard_url", "created_at", "timings"):
        assert row[key] == full[key], key
    assert full["metrics"]["curves"] and full["spec"]["epochs"] == 1


def test_cancel_and_retry_follow_the_state_machine(api) -> None:
    job_id = _submit(api, TRAIN).json()["id"]
    r = api.client.post(f"/v1/jobs/{job_id}/retry", headers=api.auth)
    assert r.status_code == 409 and r.json()["status"] == "queued" and "cannot retry" in r.json()["detail"]
    r = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = api.client.post(f"/v1/jobs/{job_id}/retry", headers=api.auth)
    assert r.status_code == 200 and (r.json()["status"], r.json()["attempt"]) == ("queued", 2)
    with api.sessions()() as s:
        transitions.claim_queued_jobs(s, limit=1, claimer="t")
        transitions.transition(s, job_id, "running", ray_job_id="raysubmit_1")
    r = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth)
    assert r.json()["status"] == "cancelling"
    assert r.json()["ray_dashboard_url"] == "http://127.0.0.1:8265/#/jobs/raysubmit_1"
    with api.sessions()() as s:
        transitions.transition(s, job_id, "succeeded")
    r = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth)
    assert r.status_code == 409
    assert r.json()["status"] == "succeeded" and "succeeded" in r.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/v1/jobs/424242"), ("post", "/v1/jobs/424242/cancel"), ("post", "/v1/jobs/424242/retry"),
     ("get", "/v1/jobs/424242/events"), ("get", "/v1/jobs/424242/metrics"),
     ("get", "/v1/jobs/424242/artifacts"), ("get", "/v1/jobs/424242/artifacts/a.txt")],
)
def test_unknown_jobs_are_404(api, method: str, path: str) -> None:
    r = getattr(api.client, method)(path, headers=api.auth)
    assert r.status_code == 404 and "job 424242 not found" in r.json()["detail"]


def test_non_integer_job_ids_are_422(api) -> None:
    assert api.client.get("/v1/jobs/abc", headers=api.auth).status_code == 422


def test_the_api_on_postgresql(pg_api) -> None:
    """The same flow against PostgreSQL: submit, idempotent replay, cancel, 409."""
    first = _submit(pg_api, TRAIN, **{"Idempotency-Key": "pg"})
    assert first.status_code == 201
    assert _submit(pg_api, TRAIN, **{"Idempotency-Key": "pg"}).json()["id"] == first.json()["id"]
    job_id = first.json()["id"]
    r = pg_api.client.post(f"/v1/jobs/{job_id}/cancel", headers=pg_api.auth)
    assert r.json()["status"] == "cancelled"
    r = pg_api.client.post(f"/v1/jobs/{job_id}/cancel", headers=pg_api.auth)
    assert r.status_code == 409 and r.json()["status"] == "cancelled"
    got = pg_api.client.get(f"/v1/jobs/{job_id}", headers=pg_api.auth).json()
    assert got["timings"]["cancelled_at"] is not None and got["spec"]["epochs"] == 1


def test_a_new_or_retried_job_wakes_the_dispatcher_but_a_replay_does_not(api) -> None:
    class Waker:
        calls = 0

        def wake(self) -> None:
            self.calls += 1

    api.app.state.dispatcher = waker = Waker()
    try:
        job_id = _submit(api, TRAIN, **{"Idempotency-Key": "wake-1"}).json()["id"]
        assert waker.calls == 1
        assert _submit(api, TRAIN, **{"Idempotency-Key": "wake-1"}).status_code == 200
        assert waker.calls == 1  # a replay creates nothing to dispatch
        api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth)
        assert api.client.post(f"/v1/jobs/{job_id}/retry", headers=api.auth).status_code == 200
        assert waker.calls == 2
    finally:
        api.app.state.dispatcher = None
