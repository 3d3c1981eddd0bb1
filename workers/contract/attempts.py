"""One attempt of a job on shared storage: its driver token file and the job's attempt marker.

Both are written by the service (``service.dispatcher.submit``) before it submits an attempt to Ray, and
read by that attempt's driver and trainers (``workers.jobs.driver``):

- the **driver token file** (``JobLayout.driver_token_file``): the attempt's bearer token for the
  internal endpoints, 0600 in a 0700 directory outside the job dir. It replaces a token in the Ray
  job's environment, which Ray's Jobs API hands to anyone who can list jobs. One token per
  (job, attempt): a resubmission of the same attempt reuses the file, so a Ray job adopted after a
  lost submit answer still holds a valid token.
- the **attempt marker** (``JobLayout.attempt_marker``): the attempt the service submitted last. A
  trainer of an older attempt (its driver died, its Ray Train workers did not yet) must not write
  the job's checkpoint any more: ``AttemptFence.check()`` raises ``AttemptSuperseded`` before
  each save.

Torch-free and HTTP-free (the service imports it).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workers.contract.outbox import write_atomic

ATTEMPT_HEADER = "X-Ramp-Attempt"
"""Sent by a driver on every call to the internal endpoints: the attempt it runs (RAMP_JOB_ATTEMPT).
The service answers 409 when that is not the job's current attempt."""

_DIR_MODE = 0o700
_FILE_MODE = 0o600


class AttemptSuperseded(RuntimeError):
    """A newer attempt of the job was submitted: this one must stop writing the job's files."""


def read_token_file(path: str | os.PathLike[str]) -> str | None:
    """The token stored at ``path``; None when there is no (non-empty) file."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return token or None


def _private_dirs(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
    os.chmod(directory, _DIR_MODE)  # mkdir's mode is filtered by the umask, and exist_ok skips it


def issue_token_file(path: str | os.PathLike[str], make_token: Callable[[], str]) -> str:
    """The token in ``path``, created (0600, directory 0700) with ``make_token()`` when absent.

    Create-if-absent is atomic (a private temporary file hard-linked into place), so concurrent
    issuers -- two service replicas submitting the same attempt -- end up with the same token, and a
    reader never sees a half-written file."""
    target = Path(path)
    if (existing := read_token_file(target)) is not None:
        return existing
    _private_dirs(target.parent)
    token = make_token()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            winner = read_token_file(target)
            if winner is not None:
                return winner
            os.replace(tmp, target)  # an empty leftover (not ours): take its place
    finally:
        tmp.unlink(missing_ok=True)
    return token


def remove_token_files(directory: str | os.PathLike[str], *, keep: Path | None = None) -> None:
    """Delete the token files in ``directory`` except ``keep`` (earlier attempts' tokens are dead)."""
    d = Path(directory)
    if not d.is_dir():
        return
    for p in d.glob("*.token"):
        if keep is None or p != keep:
            p.unlink(missing_ok=True)


def write_attempt_marker(path: str | os.PathLike[str], attempt: int) -> None:
    write_atomic(Path(path), f"{int(attempt)}\n")


def read_attempt_marker(path: str | os.PathLike[str]) -> int | None:
    """The attempt in the marker; None when there is none (or it is unreadable)."""
    try:
        return int(Path(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class AttemptFence:
    """Attempt ``attempt`` of a job, checked against the job's marker before each checkpoint write.

    A missing marker passes (a run outside the service, or a service that predates markers); a
    marker naming a later attempt does not."""

    marker: str
    attempt: int

    def current(self) -> int | None:
        return read_attempt_marker(self.marker)

    def check(self) -> None:
        current = self.current()
        if current is not None and current > self.attempt:
            raise AttemptSuperseded(
                f"attempt {self.attempt} was superseded by attempt {current} ({self.marker}); "
                "not writing the job's checkpoint"
            )
