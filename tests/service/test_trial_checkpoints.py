"""Issue 19 (6): a sweep driver's reported trial checkpoints are confined to the sweep's own job
directory when the event is stored, and checked again (symlinks resolved) before a fine-tune or
an evaluation starts from one: ``"../<another job>/checkpoint"``, an absolute path or a link
planted in the directory never hand another owner's weights to a new job."""

from __future__ import annotations

import os
from typing import Any

import pytest
from sqlalchemy import update
from test_sweeps_api import SWEEP, Driver, make_running, submit

from service.db.models import Trial
from service.jobs import transitions

TRAIN = {"kind": "train", "method": "ramp", "epochs": 1, "max_steps": 20}
FINAL = {"clean": 0.9, "linf": 0.5, "l2": 0.6, "l1": 0.4, "union": 0.4, "n": 16}
ESCAPES = ["../{victim}/checkpoint", "/{storage}/jobs/{victim}/checkpoint",
           "trials/../../{victim}/checkpoint", "~/x", "trials\\..\\..\\{victim}"]


def _victim(api: Any) -> int:
    """Another job with a checkpoint on disk (as a succeeded training job has)."""
    job_id = submit(api, TRAIN | {"seed": 11}).json()["id"]
    ckpt = api.settings.job_dir(job_id) / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"another owner's weights")
    return job_id


def _ended_trials(api: Any, driver_token: Any, reported: list[str]) -> tuple[int, Driver]:
    """A running sweep whose driver ended trial_000i reporting checkpoint ``reported[i]``."""
    sweep = submit(api, SWEEP).json()["id"]
    driver = make_running(api, sweep, driver_token)
    for i, checkpoint in enumerate(reported):
        tid = f"trial_000{i}"
        driver.post({"event": "trial_start", "trial_id": tid},
                    {"event": "trial_result", "trial_id": tid, "epoch": 1,
                     "metrics": {"epoch": 1, "union": 0.4}, "checkpoint": checkpoint},
                    {"event": "trial_end", "trial_id": tid, "status": "succeeded", "final": FINAL,
                     "checkpoint": checkpoint})
    return sweep, driver


def _stored(api: Any, sweep: int) -> dict[str, str | None]:
    r = api.client.get(f"/v1/jobs/{sweep}/trials", headers=api.auth)
    assert r.status_code == 200, r.text
    return {t["trial_id"]: t["checkpoint"] for t in r.json()["trials"]}


def _finetune_from(api: Any, sweep: int, trial: str) -> Any:
    return submit(api, {"kind": "finetune", "method": "ramp", "model": "small-cnn", "epochs": 1,
                        "init_from": {"job_id": sweep, "trial": trial}})


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_reported_checkpoint_outside_the_sweep_is_not_stored_nor_used(api: Any, driver_token: Any,
                                                                        escape: str) -> None:
    victim = _victim(api)
    reported = escape.format(victim=victim, storage=str(api.settings.storage_dir).lstrip("/"))
    sweep, _ = _ended_trials(api, driver_token, [reported, "trials/trial_0001/checkpoint"])
    stored = _stored(api, sweep)
    assert stored["trial_0000"] is None, stored  # the rest of the report stands: the trial succeeded
    assert stored["trial_0001"] == "trials/trial_0001/checkpoint"
    r = _finetune_from(api, sweep, "trial_0000")
    assert r.status_code == 422 and "no checkpoint inside the sweep's directory" in r.text, r.text
    ok = _finetune_from(api, sweep, "trial_0001")
    assert ok.status_code == 201, ok.text
    assert ok.json()["spec"]["init_from"] == str(api.settings.job_dir(sweep) / "trials/trial_0001/checkpoint")


def test_a_stored_escape_is_refused_when_a_job_would_start_from_it(api: Any, driver_token: Any) -> None:
    """Rows written before reports were confined (or by hand): checked again at resolution."""
    victim = _victim(api)
    sweep, _ = _ended_trials(api, driver_token, ["trials/trial_0000/checkpoint"])
    with api.sessions()() as s:
        s.execute(update(Trial).where(Trial.job_id == sweep).values(checkpoint=f"../{victim}/checkpoint"))
        s.commit()
    for body in ({"kind": "finetune", "method": "ramp", "model": "small-cnn", "epochs": 1,
                  "init_from": {"job_id": sweep, "trial": "trial_0000"}},
                 {"kind": "eval", "job_id": sweep, "trial": "trial_0000", "n": 10}):
        r = submit(api, body)
        assert r.status_code == 422 and "no checkpoint inside the sweep's directory" in r.text, r.text


def test_a_symlink_in_the_sweep_directory_pointing_elsewhere_is_refused(api: Any, driver_token: Any) -> None:
    victim = _victim(api)
    sweep, driver = _ended_trials(api, driver_token, ["trials/trial_0000/checkpoint"])
    link = api.settings.job_dir(sweep) / "trials" / "trial_0000" / "checkpoint"
    link.parent.mkdir(parents=True)
    os.symlink(api.settings.job_dir(victim) / "checkpoint", link)
    r = _finetune_from(api, sweep, "trial_0000")
    assert r.status_code == 422 and "no checkpoint inside the sweep's directory" in r.text, r.text
    # The best trial of a succeeded sweep goes through the same check.
    assert driver.status("succeeded", metrics={"best_trial_id": "trial_0000"}).status_code == 200
    r = submit(api, {"kind": "finetune", "method": "ramp", "model": "small-cnn", "epochs": 1,
                     "init_from": {"job_id": sweep}})
    assert r.status_code == 422 and "no checkpoint inside the sweep's directory" in r.text, r.text


def test_confined_checkpoint_accepts_only_plain_relative_paths() -> None:
    from service.sweeps.trials import confined_checkpoint

    assert confined_checkpoint("trials/trial_0000/checkpoint") == "trials/trial_0000/checkpoint"
    assert confined_checkpoint("trials//t/checkpoint/") == "trials/t/checkpoint"
    assert confined_checkpoint("./trials/t") == "trials/t"
    for bad in ("", "/abs", "../x", "a/../../b", "~/x", "a\\b", "a\x00b", ".", "x" * 2000, 5, None):
        assert confined_checkpoint(bad) is None, bad


def test_a_trial_stored_without_checkpoint_says_so(api: Any, driver_token: Any) -> None:
    sweep, _ = _ended_trials(api, driver_token, ["../1/checkpoint"])
    with api.sessions()() as s:
        job = transitions.request_cancel(s, sweep)
    assert job.status in ("cancelling", "cancelled")
    r = _finetune_from(api, sweep, "trial_0000")
    assert r.status_code == 422 and "trial_0000 of sweep" in r.text
