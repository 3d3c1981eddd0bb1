"""The eval job option ``suite: "unseen"`` through the API, and a misspelt suite named in the 422."""

from __future__ import annotations

from error_support import detail_text


def _submit(api, body: dict):
    return api.client.post("/v1/jobs", json=body, headers=api.auth)


def test_an_eval_job_takes_the_unseen_suite(api) -> None:
    r = _submit(api, {"kind": "eval", "checkpoint": "/data/ckpt", "suite": "unseen", "n": 50})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["suite"] == "unseen"
    r = _submit(api, {"kind": "eval", "checkpoint": "/data/ckpt", "suite": "unsen"})
    assert r.status_code == 422 and "unknown suite 'unsen'" in detail_text(r)
    assert "unseen" in detail_text(r)  # the message lists the suites, the new one included
