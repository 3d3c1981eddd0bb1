"""What a job driver leaves on disk for the service: its event spool and its final result.

Both live under the shared storage dir (``layout.JobLayout``), so the service can read them when the
driver could not deliver (the service was down while the job ran or finished):

    spool dir / attempt-<n>.jsonl   every event of attempt n, one JSON object a line
    spool dir / attempt-<n>.acked   the highest seq the service has acknowledged
    job dir / result.json           {"attempt", "status", "metrics" | "error"}

Torch-free and HTTP-free: the service imports this module to ingest what was left behind.
Events are sent in seq order, so "acknowledged up to seq k" is a single number per attempt; the
service de-duplicates on (job, attempt, seq), so re-sending after a crash is harmless.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.contract.layout import RESULT_FILE

_SPOOL_NAME = re.compile(r"^attempt-(\d+)\.jsonl$")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Spool:
    """The append-only event log of one attempt plus its acknowledgement watermark."""

    def __init__(self, directory: str | os.PathLike[str], attempt: int) -> None:
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        self.directory = Path(directory)
        self.attempt = attempt
        self.path = self.directory / f"attempt-{attempt}.jsonl"
        self.ack_path = self.directory / f"attempt-{attempt}.acked"

    def append(self, event: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps(event, separators=(",", ":"), allow_nan=False, default=str)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def events(self) -> list[dict[str, Any]]:
        """All readable events in file order (a torn last line from a crash is skipped)."""
        return list(_read_jsonl(self.path))

    def acked(self) -> int:
        """The highest acknowledged seq, -1 when nothing was acknowledged."""
        try:
            return int(self.ack_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return -1

    def ack(self, seq: int) -> None:
        if seq > self.acked():
            write_atomic(self.ack_path, f"{seq}\n")

    def pending(self) -> list[dict[str, Any]]:
        acked = self.acked()
        return [e for e in self.events() if int(e.get("seq", -1)) > acked]

    def last_seq(self) -> int:
        seqs = [int(e["seq"]) for e in self.events() if isinstance(e.get("seq"), int)]
        return max(seqs, default=-1)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("seq"), int) and isinstance(obj.get("type"), str):
            yield obj


def spools(directory: str | os.PathLike[str]) -> list[Spool]:
    """Every attempt's spool in ``directory``, oldest attempt first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), m) for p in d.iterdir() if (m := _SPOOL_NAME.match(p.name))]
    return [Spool(d, attempt) for attempt, _ in sorted(found, key=lambda t: t[0])]


def write_result(
    directory: str | os.PathLike[str],
    *,
    attempt: int,
    status: str,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
) -> Path:
    if status not in ("succeeded", "failed"):
        raise ValueError(f"a result's status is succeeded or failed, got {status!r}")
    record: dict[str, Any] = {"attempt": attempt, "status": status}
    if metrics is not None:
        record["metrics"] = metrics
    if error is not None:
        record["error"] = error
    path = Path(directory) / RESULT_FILE
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_result(directory: str | os.PathLike[str], *, attempt: int | None = None) -> dict[str, Any] | None:
    """The driver's final result, or None (absent, unreadable, or from another attempt)."""
    try:
        record = json.loads((Path(directory) / RESULT_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") not in ("succeeded", "failed"):
        return None
    if attempt is not None and record.get("attempt") != attempt:
        return None
    return record


def clear_result(directory: str | os.PathLike[str]) -> None:
    """A new attempt starts without the previous attempt's verdict."""
    (Path(directory) / RESULT_FILE).unlink(missing_ok=True)
