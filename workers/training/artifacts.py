"""The files a training run writes next to its checkpoint: ``metrics.json``, ``history.jsonl`` and,
for ``ramp.pair=auto``, the pair selection's report (the science around them does no file I/O).

Each is replaced atomically, so a reader (the service, a crash-resumed run) never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from workers.contract.layout import HISTORY_FILE, METRICS_FILE, PAIR_SELECTION_FILE


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> Path:
    path = out_dir / METRICS_FILE
    write_text_atomic(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def write_history(out_dir: Path, history: Iterable[dict[str, Any]]) -> Path:
    path = out_dir / HISTORY_FILE
    write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in history))
    return path


def read_history(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def has_metrics(out_dir: Path) -> bool:
    """Whether a run in ``out_dir`` finished (its final ``metrics.json`` is written last)."""
    return (out_dir / METRICS_FILE).is_file()


def read_pair_report(folder: Path) -> dict[str, Any] | None:
    path = folder / PAIR_SELECTION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_pair_report(folder: Path, report: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PAIR_SELECTION_FILE
    write_text_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path
