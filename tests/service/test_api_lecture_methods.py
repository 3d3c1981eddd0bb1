"""The lecture's defences through the API: train jobs and sweeps over their params are accepted
with every default filled in; a bad param is a 422 naming it."""

from __future__ import annotations

from typing import Any

import pytest
from error_support import detail_text

from workers.contract import catalog
from workers.contract.spec import TrainSpec

LECTURE = {
    "alp": {"alp.lambda": 0.1, "alp.norm": "max"},
    "mart": {"mart.beta": 3.0, "mart.norm": "sat"},
    "vat": {"vat.lambda": 0.5, "vat.power_iters": 2},
    "fgsm-at": {"fgsm.alpha": 0.3},
    "fast-at": {"fast.step": 1.0, "fast.norm": "l2"},
    "free-at": {"free.replays": 4, "free.norm": "l1"},
    "distill": {"distill.temperature": 50.0, "distill.teacher_share": 0.4},
}
RESOURCES = {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": False}


def submit(api: Any, body: dict[str, Any]) -> Any:
    return api.client.post("/v1/jobs", json=body, headers=api.auth)


@pytest.mark.parametrize("method", sorted(LECTURE))
def test_train_jobs_and_sweeps_of_the_lecture_methods_are_accepted(api: Any, method: str) -> None:
    body = {"kind": "train", "method": method, "dataset": "mnist-5k", "epochs": 2, "max_steps": 4,
            "params": LECTURE[method], "resources": RESOURCES}
    r = submit(api, body)
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    expected = TrainSpec(**{k: v for k, v in body.items() if k in TrainSpec.model_fields}).resolve()
    assert spec["params"] == expected.params
    assert set(spec["params"]) == set(catalog.param_defaults(method, "mnist-5k", False))
    key, value = next(iter(LECTURE[method].items()))
    sweep = {"kind": "sweep", "base": {k: v for k, v in body.items() if k != "params"},
             "param_space": {f"params.{key}": {"grid": [value, value]}}, "num_samples": 1,
             "metric": "union", "mode": "max", "scheduler": None}
    r = submit(api, sweep)
    assert r.status_code == 201, r.text
    rows = api.client.get(f"/v1/jobs/{r.json()['id']}/trials", headers=api.auth).json()["trials"]
    assert len(rows) == 2 and all(t["spec"]["params"][key] == value for t in rows)


@pytest.mark.parametrize(("params", "field", "reason"), [
    ({"free.replays": 0}, "body.params.free.replays", ">= 1"),
    ({"alp.norm": "l3"}, "body.params.alp.norm", "must be one of"),
    ({"mart.beta": 1}, "body.params.mart.beta", "does not apply to method 'alp'"),
])
def test_bad_lecture_params_are_422_naming_the_field(api: Any, params: dict, field: str, reason: str) -> None:
    r = submit(api, {"kind": "train", "method": "alp", "params": params, "resources": RESOURCES})
    assert r.status_code == 422, r.text
    assert field in detail_text(r) and reason in detail_text(r)
