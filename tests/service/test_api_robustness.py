"""No input produces a 500: nasty bodies, random JSON, oversize bodies (413)."""

from __future__ import annotations

import json

import pytest
from error_support import assert_error_model
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.main import create_app

TRAIN = {"kind": "train", "epochs": 1}

NASTY: list[bytes] = [
    b"",
    b"   ",
    b"not json",
    b"{",
    b'{"kind": "train",}',
    b"[]",
    b"null",
    b"42",
    b'"train"',
    b"\xff\xfe\x00garbage",
    b'{"kind": "train", "epochs": 1e999}',
    b'{"kind": "train", "epochs": NaN}',
    b'{"kind": "train", "lr": Infinity}',
    b'{"kind": "train", "epochs": 100000000000000000000000000000000000000000000}',
    b'{"kind": "train", "seed": -1}',
    b'{"kind": "train", "epochs": true}',
    b'{"kind": "train", "epochs": "5"}',
    b'{"kind": ["train"]}',
    b'{"kind": {"$ne": null}}',
    b'{"kind": null}',
    b'{"kind": "train", "epsilons": "linf=0.3"}',
    b'{"kind": "train", "epsilons": {"linf": "NaN"}}',
    b'{"kind": "train", "params": [1, 2, 3]}',
    b'{"kind": "train", "params": {"gp.beta": 1e308}}',
    b'{"kind": "train", "model_args": {"a": "\\u0000"}}',
    b'{"kind": "train", "data_root": "\\ud800"}',
    b'{"kind": "train", "method": "\\u202eramp"}',
    "{\"kind\": \"train\", \"method\": \"ramp\U0001F680\"}".encode(),
    b'{"kind": "eval", "checkpoint": ""}',
    b'{"kind": "eval", "job_id": -5}',
    b'{"kind": "eval", "job_id": 99999999999999999999999}',
    b'{"kind": "finetune", "init_from": {"job_id": "1; DROP TABLE jobs"}}',
    b'{"kind": "finetune", "init_from": {"job_id": 1, "checkpoint": "/x"}}',
    b'{"kind": "train", "resources": {"num_workers": 1.5}}',
    b'{"kind": "train", "resources": null}',
    b'{"kind": "train", "kind": "eval"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"kind": "train", "model_args": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}",
]


@pytest.mark.parametrize("body", NASTY, ids=[repr(b[:30]) for b in NASTY])
def test_nasty_bodies_are_4xx(api, body: bytes) -> None:
    r = api.client.post("/v1/jobs", content=body, headers=api.auth | {"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text[:300])
    assert_error_model(r)


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    scalars | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)
norms = st.sampled_from(["linf", "l2", "l1", "lx"])
spec_like = st.fixed_dictionaries(
    {"kind": st.sampled_from(["train", "finetune", "eval", "sweep", ""])},
    optional={
        "method": st.sampled_from(["ramp", "eat", "nope"]) | json_values,
        "epochs": st.integers(-10, 5000) | json_values,
        "batch_size": st.integers(-1, 10_000),
        "epsilons": st.dictionaries(norms, st.floats(-1, 20)) | json_values,
        "params": st.dictionaries(st.sampled_from(["ramp.lambda", "gp.beta", "x"]), json_values),
        "resources": st.fixed_dictionaries({}, optional={"num_workers": st.integers(-1, 100)}) | json_values,
        "max_retries": st.integers(-3, 20),
        "init_from": json_values,
        "job_id": json_values,
        "checkpoint": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, spec_like))
def test_random_json_never_causes_a_server_error(api, body: object) -> None:
    headers = api.auth | {"Content-Type": "application/json"}
    r = api.client.post("/v1/jobs", content=json.dumps(body), headers=headers)
    assert r.status_code < 500, (body, r.text[:300])
    if r.status_code >= 400:
        assert_error_model(r)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values)
@example(body={"\u00b2": None})  # a Unicode digit key: str.isdigit() says yes, int() says no (was a 500)
def test_random_driver_reports_never_cause_a_server_error(api, driver_token, body: object) -> None:
    job_id = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
    auth = {"Authorization": f"Bearer {driver_token(api.app, job_id)}", "Content-Type": "application/json"}
    for path in ("events", "status"):
        r = api.client.post(f"/internal/jobs/{job_id}/{path}", content=json.dumps(body), headers=auth)
        assert r.status_code < 500, (path, body, r.text[:300])


def test_query_parameters_are_validated_not_crashing(api) -> None:
    for params in ({"limit": "lots"}, {"limit": 10**30}, {"cursor": "\u00e9\u00e9"}, {"status": ""},
                   {"cursor": "ajoxOTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk"}):
        r = api.client.get("/v1/jobs", params=params, headers=api.auth)
        assert r.status_code < 500, (params, r.text)
    for params in ({"after": -1}, {"after": "x"}, {"limit": 0}, {"follow": "maybe"}):
        job = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
        r = api.client.get(f"/v1/jobs/{job}/events", params=params, headers=api.auth)
        assert r.status_code == 422, (params, r.text)
    assert api.client.get("/v1/jobs/99999999999999999999999999", headers=api.auth).status_code in (404, 422)


def test_unicode_digits_are_not_numbers(api) -> None:
    from service.api.errors import issue

    # "²" and "٣" pass str.isdigit() but int() refuses them: they are names, never indexes.
    assert issue("body.\u00b2.0", "m")["loc"] == ["body", "\u00b2", 0]
    assert api.client.get("/ui/compare?ids=\u00b2", headers=api.auth).status_code == 422


@pytest.fixture
def small_api(tmp_path):
    from service.core.config import Settings

    settings = Settings(home=tmp_path, max_body_bytes=4096, log_level="WARNING")
    with TestClient(create_app(settings, start_dispatcher=False)) as client:
        yield client, {"Authorization": f"Bearer {settings.admin_token_file.read_text().strip()}"}


def test_bodies_over_the_limit_are_413(small_api) -> None:
    client, auth = small_api
    big = {"kind": "train", "model_args": {"pad": "x" * 5000}}
    r = client.post("/v1/jobs", json=big, headers=auth)
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must count the streamed bytes
        for _ in range(10):
            yield b"x" * 1000

    r = client.post("/v1/jobs", content=chunks(), headers=auth | {"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.post("/v1/jobs", json=TRAIN, headers=auth).status_code == 201  # under the limit
    r = client.post("/v1/jobs", content=b"{}", headers=auth | {"Content-Length": "abc"})
    assert 400 <= r.status_code < 500


def test_the_default_limit_is_one_mebibyte(api) -> None:
    assert api.settings.max_body_bytes == 1024 * 1024
    r = api.client.post("/v1/jobs", content=b" " * (1024 * 1024 + 1), headers=api.auth)
    assert r.status_code == 413
