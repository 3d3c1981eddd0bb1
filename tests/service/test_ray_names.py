"""What a job is called on Ray (issue 23): metadata naming what it trains, for whom and where its
page is; a run name per job, the same for every attempt; a submission id per attempt; the page's
base URL from RAMP_EXTERNAL_URL or the host and port. The real Ray job API reads them back in
test_dispatcher_ray."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.core.config import Settings
from service.db.models import Job
from service.dispatcher.ray_job import driver_env, ray_metadata, submission_id
from workers.contract.ray_names import MAX_VALUE_CHARS, RUN_NAME_ENV, current_run_name, job_metadata, run_name

SPEC = {"kind": "train", "method": "ramp", "dataset": "mnist-5k", "model": "small-cnn", "epochs": 1}


def _job(attempt: int = 1, spec: dict | None = None, kind: str = "train") -> Job:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return Job(id=42, kind=kind, spec=spec or SPEC, attempt=attempt, created_at=created)


def test_metadata_names_the_work_the_owner_and_the_page(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, port=8123, external_url="https://ramp.example.org/")
    assert ray_metadata(settings, _job(attempt=2), "alice") == {
        "ramp_job_id": "42", "ramp_attempt": "2", "ramp_kind": "train", "ramp_method": "ramp",
        "ramp_dataset": "mnist-5k", "ramp_model": "small-cnn", "ramp_owner": "alice",
        "ramp_run_name": "ramp-42-ramp-train", "ramp_page_url": "https://ramp.example.org/ui/jobs/42",
    }


def test_a_sweep_is_named_after_its_base_and_missing_values_are_left_out() -> None:
    sweep = {"kind": "sweep", "base": {"method": "eat", "dataset": "fashion-mnist"}, "grid": {}}
    meta = job_metadata(job_id=7, attempt=1, kind="sweep", spec=sweep, owner=None, page_url="http://x/ui/jobs/7")
    assert meta["ramp_method"] == "eat" and meta["ramp_dataset"] == "fashion-mnist"
    assert "ramp_owner" not in meta and "ramp_model" not in meta
    assert meta["ramp_run_name"] == "ramp-7-eat-sweep"
    assert run_name(8, "eval", {"kind": "eval", "job_id": 7}) == "ramp-8-none-eval"
    # A value a user chose is cut to what a dashboard shows, and a run name stays one path component.
    odd = job_metadata(job_id=1, attempt=1, kind="train", spec={"method": "m/../x", "dataset": "d" * 999},
                       owner="o", page_url="u")
    assert len(odd["ramp_dataset"]) == MAX_VALUE_CHARS and "/" not in odd["ramp_run_name"]


def test_the_run_name_is_per_job_and_the_submission_id_per_attempt(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    first, second = _job(attempt=1), _job(attempt=2)
    assert submission_id(first) != submission_id(second)
    assert submission_id(first).startswith("ramp-42-a1-") and submission_id(second).startswith("ramp-42-a2-")
    envs = [driver_env(settings, j, tmp_path / "token") for j in (first, second)]
    assert envs[0][RUN_NAME_ENV] == envs[1][RUN_NAME_ENV] == "ramp-42-ramp-train"  # a retry resumes it


def test_the_driver_reads_its_run_name_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUN_NAME_ENV, raising=False)
    assert current_run_name("train") == "train"  # outside the service (rampctl train)
    monkeypatch.setenv(RUN_NAME_ENV, "ramp-3-msd-train")
    assert current_run_name("train") == "ramp-3-msd-train"
    monkeypatch.setenv(RUN_NAME_ENV, "../../etc")
    assert "/" not in current_run_name("train")


def test_the_external_url_defaults_from_host_and_port(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(home=tmp_path, port=9000).external_url == "http://127.0.0.1:9000"
    assert Settings(home=tmp_path, host="0.0.0.0", port=9000).external_url == "http://127.0.0.1:9000"
    assert Settings(home=tmp_path, host="ramp.lan", port=80).external_url == "http://ramp.lan:80"
    monkeypatch.setenv("RAMP_EXTERNAL_URL", "https://ramp.example.org/")
    assert Settings(home=tmp_path).external_url == "https://ramp.example.org"
