"""Artifacts: recursive listing with sizes, downloads, and no way out of the job's directory."""

from __future__ import annotations

import os

import pytest

TRAIN = {"kind": "train", "epochs": 1}


@pytest.fixture
def job(api):
    """A job with files under storage_dir/jobs/<id>/ plus a secret next to it and links out."""
    job_id = api.client.post("/v1/jobs", json=TRAIN, headers=api.auth).json()["id"]
    root = api.settings.job_dir(job_id)
    (root / "checkpoint").mkdir(parents=True)
    (root / "metrics.json").write_text('{"clean": 0.9}')
    (root / "checkpoint" / "model.safetensors").write_bytes(b"\x00" * 1234)
    (root / "name with space.txt").write_text("ok")
    secret = api.settings.storage_dir / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, root / "escape.txt")  # a symlink pointing outside the job's directory
    os.symlink(api.settings.storage_dir, root / "escape_dir")
    os.symlink(root / "metrics.json", root / "inside_link.json")  # stays inside: allowed
    return api, job_id


def test_listing_is_recursive_with_sizes_and_skips_escaping_links(job) -> None:
    api, job_id = job
    r = api.client.get(f"/v1/jobs/{job_id}/artifacts", headers=api.auth)
    assert r.status_code == 200
    listed = {a["name"]: a["size"] for a in r.json()["artifacts"]}
    assert listed == {
        "checkpoint/model.safetensors": 1234,
        "inside_link.json": 14,
        "metrics.json": 14,
        "name with space.txt": 2,
    }


def test_downloads_return_the_bytes(job) -> None:
    api, job_id = job
    r = api.client.get(f"/v1/jobs/{job_id}/artifacts/checkpoint/model.safetensors", headers=api.auth)
    assert r.status_code == 200 and r.content == b"\x00" * 1234
    r = api.client.get(f"/v1/jobs/{job_id}/artifacts/name%20with%20space.txt", headers=api.auth)
    assert r.status_code == 200 and r.text == "ok"
    r = api.client.get(f"/v1/jobs/{job_id}/artifacts/inside_link.json", headers=api.auth)
    assert r.json() == {"clean": 0.9}


@pytest.mark.parametrize(
    "name",
    [
        "../secret.txt",
        "../../../../etc/passwd",
        "%2e%2e/secret.txt",
        "%2E%2E%2Fsecret.txt",
        "..%2fsecret.txt",
        "checkpoint/../../secret.txt",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "escape.txt",
        "escape_dir/secret.txt",
        "..%5csecret.txt",
        "metrics.json%00.png",
        "~/.ssh/id_rsa",
    ],
)
def test_traversal_attempts_never_leave_the_job_directory(job, name: str) -> None:
    api, job_id = job
    r = api.client.get(f"/v1/jobs/{job_id}/artifacts/{name}", headers=api.auth)
    assert r.status_code in (400, 404), (name, r.status_code)
    assert "top secret" not in r.text and "root:" not in r.text


def test_raw_encoded_dot_dot_paths_are_refused(job) -> None:
    """Send the encoded path bytes verbatim (no client-side normalisation)."""
    import httpx

    api, job_id = job
    for raw in (f"/v1/jobs/{job_id}/artifacts/%2e%2e/%2e%2e/secret.txt",
                f"/v1/jobs/{job_id}/artifacts/..%2F..%2Fsecret.txt"):
        url = httpx.URL("http://testserver", raw_path=raw.encode())
        r = api.client.get(url, headers=api.auth)
        assert r.status_code in (400, 404) and "top secret" not in r.text, raw


def test_missing_artifacts_and_directories_are_404(job) -> None:
    api, job_id = job
    assert api.client.get(f"/v1/jobs/{job_id}/artifacts/nope.bin", headers=api.auth).status_code == 404
    assert api.client.get(f"/v1/jobs/{job_id}/artifacts/checkpoint", headers=api.auth).status_code == 404
    other = api.client.post("/v1/jobs", json=TRAIN | {"seed": 2}, headers=api.auth).json()["id"]
    r = api.client.get(f"/v1/jobs/{other}/artifacts", headers=api.auth)
    assert r.status_code == 200 and r.json()["artifacts"] == []  # no directory yet
    # Another job's files are not reachable through this job's id.
    r = api.client.get(f"/v1/jobs/{other}/artifacts/../{job_id}/metrics.json", headers=api.auth)
    assert r.status_code in (400, 404) and "clean" not in r.text
