"""ramp.pair=auto over the API: single-norm AT models named by job id or checkpoint, resolved at
submission; clear 422s for the conflicting cases."""

from __future__ import annotations

from service.jobs import store, transitions

RAMP = {"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 3, "params": {"ramp.pair": "auto"}}


def _submit(api, body: dict):
    return api.client.post("/v1/jobs", json=body, headers=api.auth)


def _succeeded_at_job(api, method: str) -> int:
    job_id = _submit(api, {"kind": "train", "method": method, "epochs": 1}).json()["id"]
    with api.sessions()() as s:
        transitions.claim_queued_jobs(s, limit=100, claimer="test")
        transitions.transition(s, job_id, "succeeded", result={"clean": 0.9})
    return job_id


def test_pair_models_by_job_id_resolve_to_their_checkpoints(api) -> None:
    at_linf = _succeeded_at_job(api, "at-linf")
    models = {"linf": {"job_id": at_linf}, "l1": {"checkpoint": "/data/at-l1/checkpoint"}}
    body = RAMP | {"pair_models": models}
    r = _submit(api, body)
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["pair_models"] == {"linf": str(api.settings.layout.checkpoint_dir(at_linf)),
                                   "l1": "/data/at-l1/checkpoint"}
    assert spec["params"]["ramp.pair"] == "auto" and "ramp.q" not in spec["params"]
    with api.sessions()() as s:
        assert store.get_job(s, r.json()["id"]).spec == spec


def test_conflicts_and_bad_references_are_422_naming_the_field(api) -> None:
    queued = _submit(api, {"kind": "train", "method": "at-l2"}).json()["id"]
    cases = [
        (RAMP | {"params": {"ramp.pair": "auto", "ramp.q": "l2"}}, "body.params",
         "either the pair or 'auto'"),
        ({"kind": "train", "method": "ramp", "pair_models": {"linf": {"job_id": 1}}}, "body.pair_models",
         "set that param"),
        (RAMP | {"pair_models": {"l3": {"checkpoint": "/x"}}}, "body.pair_models", "unknown norm(s) 'l3'"),
        (RAMP | {"pair_models": {"l2": {"job_id": queued}}}, "body.pair_models.l2.job_id",
         "once it succeeded"),
        (RAMP | {"pair_models": {"l2": {"job_id": 999999}}}, "body.pair_models.l2.job_id", "does not exist"),
    ]
    for body, field, reason in cases:
        r = _submit(api, body)
        assert r.status_code == 422, (body, r.text)
        assert any(e["field"] == field and reason in e["msg"] for e in r.json()["detail"]), r.text
