"""Where a job's files live under the shared storage dir: the one definition.

    <storage>/jobs/<id>/                       the job's directory (drivers write, the API serves)
        checkpoint/                            the latest training checkpoint (``CHECKPOINT_DIR``)
        metrics.json, per_sample.npz, ...      the final evaluation
        result.json                            the driver's final word: attempt, status, metrics | error
        .attempt                               the current attempt (the fence of stale trainers)
        trials/<trial id>/...                  a sweep's trials
    <storage>/spool/jobs/<id>/attempt-<n>.jsonl, .acked   the driver's event spool per attempt
    <storage>/secrets/jobs/<id>/<submission id>.token     an attempt's driver token (0600, dirs 0700)

The service, the driver and the outbox all go through ``JobLayout``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = "checkpoint"
META_FILE = "meta.json"  # inside a checkpoint: how to rebuild the model (plain JSON)
WEIGHTS_FILE = "model.safetensors"  # inside a checkpoint: the weights
TRAIN_STATE_FILE = "train_state.pt"  # inside a checkpoint: what a resumed run continues from
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.json"  # an evaluation's numbers (training runs end with one too)
PER_SAMPLE_FILE = "per_sample.npz"  # an evaluation's per-point flags, beside its metrics.json
HISTORY_FILE = "history.jsonl"  # a training run's per-epoch reports
SWEEP_RESULT_FILE = "sweep_result.json"  # a sweep's trials and best trial, beside trials/
PAIR_SELECTION_DIR = "pair_selection"  # ramp.pair=auto: the single-norm AT runs and the report
PAIR_SELECTION_FILE = "pair_selection.json"
TRIALS_DIR = "trials"
ATTEMPT_MARKER = ".attempt"  # hidden: drivers do not list dot-files as artifacts


@dataclass(frozen=True)
class JobLayout:
    storage_dir: Path

    @classmethod
    def at(cls, storage_dir: str | os.PathLike[str]) -> JobLayout:
        return cls(Path(storage_dir))

    def job_dir(self, job_id: int) -> Path:
        return self.storage_dir / "jobs" / str(job_id)

    def checkpoint_dir(self, job_id: int) -> Path:
        return self.job_dir(job_id) / CHECKPOINT_DIR

    def has_train_state(self, job_id: int) -> bool:
        """Whether an earlier attempt left a training state: the next attempt resumes from it."""
        return (self.checkpoint_dir(job_id) / TRAIN_STATE_FILE).is_file()

    def result_file(self, job_id: int) -> Path:
        return self.job_dir(job_id) / RESULT_FILE

    def trial_dir(self, job_id: int, trial_id: str) -> Path:
        return self.job_dir(job_id) / TRIALS_DIR / trial_id

    def spool_dir(self, job_id: int) -> Path:
        return self.storage_dir / "spool" / "jobs" / str(job_id)

    def attempt_marker(self, job_id: int) -> Path:
        """The job's current attempt number, written by the service before it submits an attempt."""
        return self.job_dir(job_id) / ATTEMPT_MARKER

    def secrets_dir(self, job_id: int) -> Path:
        """Outside the job dir, so no artifact listing or download can reach it."""
        return self.storage_dir / "secrets" / "jobs" / str(job_id)

    def driver_token_file(self, job_id: int, submission: str) -> Path:
        """Where the service leaves the driver token of one attempt (named by its Ray submission id,
        unique per job, attempt and database) for its driver to read: the token never travels in
        the Ray job's environment, which Ray's Jobs API lists."""
        if not submission or "/" in submission or submission.startswith("."):
            raise ValueError(f"bad submission id {submission!r}")
        return self.secrets_dir(job_id) / f"{submission}.token"

    @staticmethod
    def storage_of(job_dir: str | os.PathLike[str]) -> Path:
        """The storage dir a job dir belongs to (``<storage>/jobs/<id>`` -> ``<storage>``)."""
        return Path(job_dir).parents[1]


class CheckpointMetaError(ValueError):
    """A checkpoint's metadata that cannot be read."""


def checkpoint_meta_file(path: str | os.PathLike[str]) -> Path:
    """Where a checkpoint's metadata lies: ``path`` is the checkpoint or the run that holds it."""
    p = Path(path).expanduser()
    nested = p / CHECKPOINT_DIR / META_FILE
    return nested if not (p / META_FILE).is_file() and nested.is_file() else p / META_FILE


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's ``meta.json`` as plain JSON (torch-free: the service reads it too)."""
    file = checkpoint_meta_file(path)
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = "not found" if isinstance(e, FileNotFoundError) else str(e)
        raise CheckpointMetaError(f"its {file} cannot be read ({reason})") from None
    if not isinstance(meta, dict):
        raise CheckpointMetaError(f"its {file} is not a JSON object")
    return meta
