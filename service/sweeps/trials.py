"""Database operations on sweep trials (the children of a ``sweep`` job), as functions taking a
Session.

Trials are created when the sweep is submitted (their configs are known up front: the expansion
is deterministic) and updated by the sweep driver's ``trial`` events, which travel through the
ordinary event pipeline (``repository.add_events``: numbered, spooled, de-duplicated, re-ingested
after a service restart). So every update here must be idempotent: a re-sent event changes
nothing. The functions below do not commit: they run inside the caller's unit of work (the event
batch, or the job's status change), so a trial never disagrees with the events stored with it.

Trial ``data`` events (``{"event": ..., "trial_id": ...}``):

- ``sweep_start`` ``{"trials": [{"trial_id", "index", "config"}, ...]}``: a sweep attempt begins;
  every trial is (re)set to ``pending`` for this attempt.
- ``trial_start``: the trial runs (``tune_trial_id`` optional).
- ``trial_result`` ``{"epoch", "metrics", "checkpoint"?}``: one epoch's flat metrics.
- ``trial_end`` ``{"status", "error"?, "final"?, "checkpoint"?}``: the trial finished.

A reported ``checkpoint`` is kept only if it lies inside the sweep's own job directory
(``confined_checkpoint``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import Job, Trial
from service.state import JobStatus
from workers.contract.sweep import best_trial, trial_score

log = logging.getLogger(__name__)

SWEEP_KIND = "sweep"
PENDING, RUNNING = "pending", "running"
# "stopped": ended early by the scheduler (ASHA); its checkpoint is that of its last epoch.
TRIAL_STATUSES = ("pending", "running", "succeeded", "stopped", "failed", "cancelled")
OPEN = frozenset({PENDING, RUNNING})
FINISHED_WITH_CHECKPOINT = frozenset({"succeeded", "stopped"})
MAX_ERROR_CHARS = 8000


class TrialNotFound(LookupError):
    def __init__(self, job_id: int, trial_id: str) -> None:
        self.job_id = job_id
        self.trial_id = trial_id
        super().__init__(f"sweep {job_id} has no trial {trial_id!r}")


class NotASweep(LookupError):
    def __init__(self, job: Job) -> None:
        self.job_id = job.id
        super().__init__(f"job {job.id} is a {job.kind} job, not a sweep: it has no trials")


# ------------------------------------------------------------------------------------ creating


def create_trials(session: Session, job_id: int, trials: Iterable[Mapping[str, Any]]) -> None:
    """Add the expanded trials of a new sweep (``trial_id``, ``index``, ``config``, ``spec``)."""
    now = utcnow()
    for t in trials:
        session.add(
            Trial(
                job_id=job_id, trial_id=str(t["trial_id"]), trial_index=int(t["index"]), attempt=1,
                status=PENDING, config=dict(t.get("config") or {}), spec=t.get("spec"), metrics=[],
                created_at=now, updated_at=now,
            )
        )


# ------------------------------------------------------------------------------------- reading


def require_sweep(job: Job) -> None:
    if job.kind != SWEEP_KIND:
        raise NotASweep(job)


def list_trials(session: Session, job_id: int) -> list[Trial]:
    """A sweep's trials in expansion order (the caller checks the job exists and is a sweep)."""
    rows = list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.trial_index)))
    session.commit()
    return rows


def get_trial(session: Session, job_id: int, trial_id: str) -> Trial:
    row = session.scalars(select(Trial).where(Trial.job_id == job_id, Trial.trial_id == trial_id)).first()
    session.commit()
    if row is None:
        raise TrialNotFound(job_id, trial_id)
    return row


def score(trial: Trial, metric: str) -> float | None:
    """The value the sweep ranks ``trial`` by: ``metric`` in its last recorded epoch."""
    return trial_score(trial.metrics or [], metric)


def best(trials: Iterable[Trial], metric: str, mode: str) -> Trial | None:
    """The best trial by its recorded metrics, with the very rule the sweep driver uses
    (``workers.contract.sweep.best_trial``: last epoch's value, ties to the earliest)."""
    rows = list(trials)
    chosen = best_trial(
        [{"trial_id": t.trial_id, "metrics": t.metrics or []} for t in rows], metric, mode  # type: ignore[arg-type]
    )
    return next((t for t in rows if t.trial_id == chosen), None)


# ------------------------------------------------------------------------------------- updating


def _text(value: Any, limit: int) -> str | None:
    return None if value is None else str(value)[-limit:]


MAX_CHECKPOINT_CHARS = 1024


def confined_checkpoint(value: Any) -> str | None:
    """A trial checkpoint a driver reported, if it names a place inside the sweep's own job
    directory: a relative path without ``..``, ``~``, backslashes or NUL (the driver reports
    them relative to that directory). None for anything else: a report that points elsewhere
    ("../<another job>/checkpoint", an absolute path) must not become the checkpoint a fine-tune
    or evaluation of this trial starts from -- that would be another owner's weights.
    ``service.jobs.checkpoints`` checks the stored path again, symlinks resolved, before using it."""
    if not isinstance(value, str) or not value or len(value) > MAX_CHECKPOINT_CHARS:
        return None
    if "\x00" in value or "\\" in value or value.startswith(("/", "~")):
        return None
    parts = PurePosixPath(value).parts
    if not parts or any(p == ".." or p.startswith("~") for p in parts):
        return None
    return PurePosixPath(*parts).as_posix()


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Applier:
    """Applies one ``trial`` event to the rows of one sweep (loaded once per batch, locked)."""

    def __init__(self, session: Session, job: Job) -> None:
        self.session = session
        self.job = job
        stmt = select(Trial).where(Trial.job_id == job.id)
        if session.get_bind().dialect.name == "postgresql":
            # Concurrent batches of one sweep (a re-send racing a spool ingestion) take turns.
            stmt = stmt.with_for_update()
        self.rows: dict[str, Trial] = {t.trial_id: t for t in session.scalars(stmt)}

    def _row(self, data: Mapping[str, Any], attempt: int, *, create: bool = True) -> Trial | None:
        trial_id = data.get("trial_id")
        if not isinstance(trial_id, str) or not trial_id:
            return None
        row = self.rows.get(trial_id)
        if row is None:
            if not create:
                return None
            index = data.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                index = len(self.rows)
            row = Trial(
                job_id=self.job.id, trial_id=trial_id[:64], trial_index=index,
                attempt=attempt, status=PENDING, config={}, metrics=[], created_at=utcnow(),
            )
            self.session.add(row)
            self.rows[trial_id] = row
        if attempt < row.attempt:
            return None  # a late event of an earlier attempt of the sweep
        if attempt > row.attempt:
            _reset(row, attempt)
        if isinstance(data.get("config"), Mapping) and data["config"]:
            row.config = dict(data["config"])
        row.updated_at = utcnow()
        return row

    def sweep_start(self, data: Mapping[str, Any], attempt: int) -> None:
        # _row resets the rows an earlier attempt left and creates any the service lacks.
        for item in data.get("trials") or []:
            if isinstance(item, Mapping):
                self._row(item, attempt)

    def trial_start(self, data: Mapping[str, Any], attempt: int) -> None:
        row = self._row(data, attempt)
        if row is None or row.status not in OPEN:
            return
        row.status = RUNNING
        row.started_at = row.started_at or utcnow()
        if isinstance(data.get("tune_trial_id"), str):
            row.tune_trial_id = data["tune_trial_id"][:128]

    def trial_result(self, data: Mapping[str, Any], attempt: int) -> None:
        row = self._row(data, attempt)
        metrics = data.get("metrics")
        if row is None or not isinstance(metrics, Mapping):
            return
        epoch = metrics.get("epoch", data.get("epoch"))
        entry = dict(metrics)
        # Replace, not append, an epoch already recorded: re-delivery must not duplicate history.
        history = [m for m in (row.metrics or []) if m.get("epoch") != epoch or epoch is None]
        history.append(entry)
        history.sort(key=lambda m: m.get("epoch") if _finite_number(m.get("epoch")) else math.inf)
        row.metrics = history
        if row.status == PENDING:
            row.status = RUNNING
            row.started_at = row.started_at or utcnow()
        self._checkpoint(row, data)

    def trial_end(self, data: Mapping[str, Any], attempt: int) -> None:
        row = self._row(data, attempt)
        status = data.get("status")
        if row is None or status not in TRIAL_STATUSES or status in OPEN:
            return
        row.status = status
        row.error = _text(data.get("error"), MAX_ERROR_CHARS)
        if isinstance(data.get("final"), Mapping):
            row.final = dict(data["final"])
        self._checkpoint(row, data)
        row.ended_at = utcnow()

    def _checkpoint(self, row: Trial, data: Mapping[str, Any]) -> None:
        if "checkpoint" not in data or data["checkpoint"] is None:
            return
        confined = confined_checkpoint(data["checkpoint"])
        if confined is None:
            # The rest of the event stands; the trial just has no checkpoint to start from.
            log.warning("ignoring a trial checkpoint outside the sweep's directory",
                        extra={"job_id": self.job.id, "trial_id": row.trial_id,
                               "checkpoint": str(data["checkpoint"])[:200]})
            row.checkpoint = None
            return
        row.checkpoint = confined


def _reset(row: Trial, attempt: int) -> None:
    row.attempt = attempt
    row.status = PENDING
    row.metrics = []
    row.final = None
    row.checkpoint = None
    row.error = None
    row.tune_trial_id = None
    row.started_at = None
    row.ended_at = None
    row.updated_at = utcnow()


_HANDLERS = {
    "sweep_start": _Applier.sweep_start,
    "trial_start": _Applier.trial_start,
    "trial_result": _Applier.trial_result,
    "trial_end": _Applier.trial_end,
}


def apply_trial_events(session: Session, job: Job, events: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
    """Apply (attempt, data) ``trial`` events of ``job``, in order, without committing.

    Malformed events are skipped (they stay stored as events): a driver's report is never
    rejected for its content, or the reporter would drop the whole batch.
    """
    events = list(events)
    if not events or job.kind != SWEEP_KIND:
        return
    applier = _Applier(session, job)
    for attempt, data in events:
        handler = _HANDLERS.get(str(data.get("event")))
        if handler is None:
            log.warning("ignoring an unknown trial event",
                        extra={"job_id": job.id, "event": str(data.get("event"))[:64]})
            continue
        handler(applier, data, attempt)


def close_open_trials(session: Session, job: Job, job_status: str) -> int:
    """The sweep reached a terminal status: trials of its attempt still pending or running will
    never report again (a cancel kills the driver). Returns how many were closed. No commit."""
    if job.kind != SWEEP_KIND:
        return 0
    rows = session.scalars(
        select(Trial).where(Trial.job_id == job.id, Trial.status.in_(OPEN), Trial.attempt == job.attempt)
    )
    now = utcnow()
    closed = 0
    for row in rows:
        if job_status == JobStatus.CANCELLED.value:
            row.status = "cancelled"
        else:
            row.status = "failed"
            row.error = row.error or f"the sweep ended ({job_status}) before this trial finished"
        row.ended_at = now
        row.updated_at = now
        closed += 1
    return closed
