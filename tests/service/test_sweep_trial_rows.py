"""The trial rows a sweep stores at submission are the specs its runner trains.

A fine-tune sweep that leaves ``model`` out takes the checkpoint's architecture; the service's trial
rows and the runner's trial specs must agree on it (and on every other field).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers.contract.sweep import SweepSpec

WRN_ARGS = {"depth": 10, "width": 1}


def _fake_checkpoint(folder: Path) -> Path:
    """A checkpoint's metadata only: the resolution reads nothing else (no weights needed)."""
    ckpt = folder / "checkpoint"
    ckpt.mkdir(parents=True)
    meta = {"format_version": 1, "model": "wrn", "model_args": WRN_ARGS, "dataset": "mnist-5k",
            "num_classes": 10, "in_channels": 1, "input_size": [28, 28]}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    return ckpt


def _runner_specs(stored: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from workers.ray_entry.sweep.tuner import trial_specs

    sweep = SweepSpec.model_validate({k: v for k, v in stored.items() if k in SweepSpec.model_fields})
    return {tid: spec.model_dump(mode="json") for tid, spec in trial_specs(sweep).items()}


def test_a_finetune_sweep_without_model_stores_the_trials_the_runner_trains(api: Any) -> None:
    ckpt = _fake_checkpoint(api.settings.data_roots[1] / "pretrained")
    body = {"kind": "sweep",
            "base": {"kind": "finetune", "method": "ramp", "dataset": "mnist-5k", "epochs": 1,
                     "max_steps": 2, "init_from": {"checkpoint": str(ckpt)}},
            "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}}}
    r = api.client.post("/v1/jobs", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
    job = r.json()
    rows = api.client.get(f"/v1/jobs/{job['id']}/trials", headers=api.auth).json()["trials"]
    stored = {t["trial_id"]: t["spec"] for t in rows}
    trained = _runner_specs(job["spec"])
    assert {s["model"] for s in trained.values()} == {"wrn"}  # the checkpoint's architecture
    assert stored == trained


def test_a_finetune_sweep_from_an_unreadable_checkpoint_needs_a_model(api: Any) -> None:
    missing = api.settings.data_roots[1] / "nowhere" / "checkpoint"
    body = {"kind": "sweep",
            "base": {"kind": "finetune", "method": "ramp", "epochs": 1,
                     "init_from": {"checkpoint": str(missing)}},
            "param_space": {"params.ramp.lambda": {"grid": [0.5, 5]}}}
    r = api.client.post("/v1/jobs", json=body, headers=api.auth)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["field"] == "body.base.model" and "meta.json" in e["msg"] for e in errors), r.text
    body["base"]["model"] = "small-cnn"
    r = api.client.post("/v1/jobs", json=body, headers=api.auth)
    assert r.status_code == 201, r.text
