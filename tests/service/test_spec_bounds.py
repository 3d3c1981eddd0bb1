"""Issue 19, items 3 and 4: what a job spec's numbers and model args may be.

- Huge numbers: a 400-digit integer (or a number that overflows to infinity) anywhere in a body --
  a param, a sweep grid value, a ``randint`` bound, a ``model_args`` grid value -- is a 422 naming
  the field on ``POST /v1/jobs`` and ``/ui/submit``, never a 500; a driver's report gets null there.
  A sweep stored with such a value before (by hand here) no longer breaks its pages.
- ``model_args`` are validated at submission against each model's own arguments and bounds
  (unknown names, ``width: 1000000``, markup as a key: 422 naming ``model_args``), and path
  fields have a length cap (``data_root`` like ``checkpoint``: 4096 characters).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from service.core.config import Settings
from service.main import create_app

BIG = int("9" * 400)
TRAIN = {"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 20}
BASE = {"method": "ramp", "epochs": 1, "max_steps": 4}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], Any]]:
    """The app without Ray; server errors come back as 500 answers (not raised into the test)."""
    home = tmp_path / "home"
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'ramp.db'}", ray_address=None,
                        log_level="CRITICAL", rate_limit_per_minute=0, data_roots=[home / "data"])
    app = create_app(settings, start_dispatcher=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert settings.admin_token_file is not None
        yield c, {"Authorization": f"Bearer {settings.admin_token_file.read_text().strip()}"}, app


def _post(client: Any, body: Any) -> Any:
    c, auth, _ = client
    return c.post("/v1/jobs", content=json.dumps(body), headers=auth | {"Content-Type": "application/json"})


def _ui_submit(client: Any, body: Any) -> Any:
    c, auth, _ = client
    return c.post("/ui/submit", data={"spec": json.dumps(body)}, headers=auth, follow_redirects=False)


def _fields(r: Any) -> list[str]:
    assert r.status_code == 422, (r.status_code, r.text[:500])
    return [issue["field"] for issue in r.json()["detail"]]


# ------------------------------------------------------------------------------- huge numbers

HUGE_BODIES = [
    (TRAIN | {"params": {"ramp.lambda": BIG}}, "body.params.ramp.lambda"),
    (TRAIN | {"params": {"ramp.lambda": -BIG}}, "body.params.ramp.lambda"),
    (TRAIN | {"epsilons": {"linf": BIG}}, "body.epsilons.linf"),
    (TRAIN | {"model_args": {"hidden": BIG}}, "body.model_args.hidden"),
    ({"kind": "sweep", "base": BASE, "param_space": {"params.ramp.lambda": {"grid": [0.5, BIG]}}},
     "body.param_space.params.ramp.lambda.grid.1"),
    ({"kind": "sweep", "base": BASE, "param_space": {"seed": {"randint": [0, BIG]}}},
     "body.param_space.seed.randint.1"),
    ({"kind": "sweep", "base": BASE, "param_space": {"model_args.hidden": {"grid": [BIG, 3]},
                                                    "lr": {"grid": [0.1, 0.2]}}},
     "body.param_space.model_args.hidden.grid.0"),
    ({"kind": "eval", "checkpoint": "/x", "n": BIG}, "body.n"),
]


@pytest.mark.parametrize("body,field", HUGE_BODIES, ids=[f for _, f in HUGE_BODIES])
def test_a_huge_integer_is_a_422_naming_its_field_on_the_api(client, body: dict[str, Any],
                                                             field: str) -> None:
    r = _post(client, body)
    assert field in _fields(r), r.text[:500]
    assert "out of range" in r.text


@pytest.mark.parametrize("body,field", HUGE_BODIES, ids=[f for _, f in HUGE_BODIES])
def test_a_huge_integer_is_a_422_naming_its_field_on_the_submit_page(client, body: dict[str, Any],
                                                                     field: str) -> None:
    r = _ui_submit(client, body)
    assert r.status_code == 422 and field in r.text and "out of range" in r.text, r.text[:500]


def test_a_number_that_overflows_to_infinity_is_a_422_naming_its_field(client) -> None:
    c, auth, _ = client
    r = c.post("/v1/jobs", content=b'{"kind": "train", "lr": 1e400}',
               headers=auth | {"Content-Type": "application/json"})
    assert _fields(r) == ["body.lr"] and "finite" in r.text


def test_sixty_four_bits_are_still_a_number_and_then_the_field_s_own_bounds_apply(client) -> None:
    r = _post(client, TRAIN | {"seed": 2**63 - 1})
    assert _fields(r) == ["body.seed"] and "out of range" not in r.text  # the field's own bound speaks
    assert _post(client, TRAIN | {"seed": 2**31 - 1}).status_code == 201


def test_a_sweep_stored_with_a_huge_value_does_not_break_its_pages(client) -> None:
    """A sweep whose model_args grid held a 400-digit value was accepted before, then every page
    of it was a 500 for its owner and for admins; such rows may still exist."""
    from service.db.models import Job, Trial

    c, auth, app = client
    body = {"kind": "sweep", "base": BASE,
            "param_space": {"model_args.hidden": {"grid": [3, 4]}, "lr": {"grid": [0.1, 0.2]}}}
    r = _post(client, body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    with app.state.session_factory() as s:
        spec = dict(r.json()["spec"])
        spec["param_space"] = {"model_args.hidden": {"grid": [BIG, 4]}, "lr": {"grid": [0.1, 0.2]}}
        s.execute(update(Job).where(Job.id == job_id).values(spec=spec))
        s.execute(update(Trial).where(Trial.job_id == job_id, Trial.trial_index < 2)
                  .values(config={"model_args.hidden": BIG, "lr": 0.1}))
        s.commit()
    for url in (f"/ui/jobs/{job_id}", f"/ui/api/jobs/{job_id}", f"/ui/fragments/jobs/{job_id}/trials",
                f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/trials", "/ui/jobs"):
        assert c.get(url, headers=auth).status_code == 200, url


def test_a_driver_s_huge_numbers_are_stored_as_null(client, driver_token) -> None:
    c, auth, app = client
    job_id = _post(client, TRAIN).json()["id"]
    token = {"Authorization": f"Bearer {driver_token(app, job_id)}"}
    body = json.dumps({"events": [{"seq": 0, "type": "metrics", "data": {"epoch": 1, "loss": BIG}}]})
    r = c.post(f"/internal/jobs/{job_id}/events", content=body,
               headers=token | {"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    history = c.get(f"/v1/jobs/{job_id}/metrics", headers=auth).json()["history"]
    assert history == [{"attempt": 1, "epoch": 1, "loss": None}]
    assert c.get(f"/ui/jobs/{job_id}", headers=auth).status_code == 200


def test_the_contract_says_out_of_range_instead_of_overflowing() -> None:
    """What the CLI builds directly (no service in between): a ValueError, no OverflowError."""
    from pydantic import ValidationError

    from workers.contract.spec import TrainSpec
    from workers.contract.sweep import SweepSpec

    with pytest.raises(ValidationError, match="out of range"):
        TrainSpec(params={"ramp.lambda": BIG})
    with pytest.raises(ValidationError, match="64-bit"):
        SweepSpec.model_validate({"base": {"epochs": 1}, "param_space": {"seed": {"randint": [0, BIG]}}})


huge = st.integers(min_value=2**63) | st.integers(max_value=-(2**63))
placements = st.sampled_from([
    lambda v: TRAIN | {"params": {"ramp.lambda": v}},
    lambda v: TRAIN | {"epochs": v},
    lambda v: TRAIN | {"model_args": {"width": v}},
    lambda v: TRAIN | {"resources": {"num_workers": v}},
    lambda v: {"kind": "sweep", "base": BASE | {"batch_size": v}, "param_space": {"lr": {"grid": [0.1]}}},
    lambda v: {"kind": "sweep", "base": BASE, "param_space": {"seed": {"randint": [v, 5]}}},
    lambda v: {"kind": "sweep", "base": BASE, "param_space": {"lr": {"choice": [0.1, v]}}},
    lambda v: {"kind": "finetune", "init_from": {"job_id": v}},
    lambda v: {"kind": "eval", "job_id": v},
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=huge, place=placements)
def test_a_huge_integer_anywhere_is_a_422(client, value: int, place: Any) -> None:
    r = _post(client, place(value))
    assert r.status_code == 422, (r.status_code, r.text[:300])


# --------------------------------------------------------------------------------- model args


@pytest.mark.parametrize("model_args,why", [
    ({"no_such_arg": 1}, "no_such_arg"),
    ({"<b>x</b>": 1}, "does not take"),
    ({"hidden": 1_000_000}, "hidden"),
    ({"channels": [32]}, "channels"),
    ({"channels": [32, 0]}, "channels"),
    ({"activation": "tanh"}, "activation"),
    ({"hidden": "256"}, "hidden"),
    ({"mean": [0.5]}, "mean and std"),
    ({"mean": [0.5], "std": [0.0]}, "std"),
])
def test_model_args_are_checked_against_the_model_at_submission(client, model_args: dict, why: str) -> None:
    r = _post(client, TRAIN | {"model_args": model_args})
    assert _fields(r) == ["body.model_args"] and why in r.text, r.text[:500]
    r = _ui_submit(client, TRAIN | {"model_args": model_args})
    assert r.status_code == 422 and "body.model_args" in r.text


@pytest.mark.parametrize("model,model_args,why", [
    ("preact-resnet18", {"width": 1_000_000}, "width"),
    ("preact-resnet18", {"softplus_beta": 0}, "softplus_beta"),
    ("preact-resnet18", {"hidden": 3}, "does not take"),  # small-cnn's arg, not this model's
    ("wrn", {"depth": 27}, "depth"),
    ("wrn", {"width": 1000}, "width"),
    ("resnet18", {"stem": "huge"}, "stem"),
    ("resnet18", {"width": 2}, "does not take"),
])
def test_each_model_has_its_own_args_and_bounds(client, model: str, model_args: dict, why: str) -> None:
    r = _post(client, TRAIN | {"model": model, "model_args": model_args})
    assert _fields(r) == ["body.model_args"] and why in r.text, r.text[:500]


def test_valid_model_args_are_accepted_and_stored(client) -> None:
    for model, args in (("small-cnn", {"channels": [8, 16], "hidden": 32, "activation": "softplus"}),
                        ("preact-resnet18", {"width": 16, "activation": "softplus", "softplus_beta": 2.0}),
                        ("wrn", {"depth": 16, "width": 2}), ("resnet18", {"stem": "cifar"}),
                        ("small-cnn", {"mean": [0.1307], "std": [0.3081]})):
        r = _post(client, TRAIN | {"model": model, "model_args": args})
        assert r.status_code == 201, (model, r.text[:500])
        assert r.json()["spec"]["model_args"] == args


def test_a_swept_model_arg_is_checked_value_by_value(client) -> None:
    body = {"kind": "sweep", "base": BASE, "param_space": {"model_args.hidden": {"grid": [16, 10**7]}}}
    r = _post(client, body)
    assert _fields(r) == ["body.param_space.model_args.hidden"] and "hidden" in r.text
    body["param_space"] = {"model_args.nope": {"grid": [1]}}
    assert _fields(_post(client, body)) == ["body.param_space.model_args.nope"]


@pytest.mark.parametrize("body,field", [
    (TRAIN | {"data_root": "/data/" + "a" * 5000}, "body.data_root"),
    ({"kind": "eval", "checkpoint": "/data/x", "data_file": "/data/" + "a" * 5000}, "body.data_file"),
    ({"kind": "finetune", "init_from": {"checkpoint": "/data/" + "a" * 5000}}, "body.init_from.checkpoint"),
])
def test_path_fields_have_a_length_cap(client, body: dict[str, Any], field: str) -> None:
    r = _post(client, body)
    assert _fields(r) == [field] and "4096" in r.text, r.text[:300]
