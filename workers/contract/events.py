"""The events a job driver reports to the service, typed once for both sides.

Types: ``progress`` (``step``, ``total_steps``, ``fraction``, ``phase``: train | eval | done, ...),
``metrics`` (one epoch's ``EpochReport``), ``log`` (``message``, ``level``), ``artifact`` (``name``,
``size``, ``kind``), ``status`` (a status the driver saw), ``trial`` (a sweep trial's lifecycle; see
``service/trials_repository.py``). ``seq`` numbers an attempt's events from 0: the service stores
each (attempt, seq) once, so re-sending after a crash is harmless.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["progress", "metrics", "log", "artifact", "status", "trial"]
EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))

MAX_SEQ = 2**31 - 1
MAX_ATTEMPT = 1000


class Event(BaseModel):
    """One event as a driver sends it (``attempt`` defaults to the job's current attempt)."""

    model_config = ConfigDict(extra="forbid")

    seq: int | None = Field(default=None, ge=0, le=MAX_SEQ)
    type: EventType
    data: dict[str, Any] = Field(default_factory=dict)
    attempt: int | None = Field(default=None, ge=1, le=MAX_ATTEMPT)
