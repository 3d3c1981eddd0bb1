"""The ``unseen`` suite on the pages: a bar chart per unseen adversary on the job page and the
unseen rows of the compare page. Pure functions of stored results (``metrics.json`` shapes).

The chart is server-drawn SVG (bar lengths are SVG attributes, which the page's content-security
policy allows, unlike inline styles), so it shows without the charting script.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.db.models import Job
from service.jobs.comparison import job_label
from workers.contract import display
from workers.contract.unseen import unseen_rows

BAR_WIDTH = 300  # px of the SVG's plot area at 100 %
BAR_HEIGHT, BAR_GAP, LABEL_WIDTH = 18, 6, 130


def unseen_chart(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """One bar per unseen adversary, their mean, the unseen union and the corruptions' mean
    (None when the result has no unseen suite): label, accuracy, its interval text, budget, and
    the bar's geometry."""
    rows = unseen_rows(result)
    if not rows:
        return None
    bars = []
    for i, row in enumerate(rows):
        accuracy = row.accuracy if row.accuracy is not None else 0.0
        bars.append({
            "key": row.key, "label": row.label, "accuracy": row.accuracy,
            "interval": display.interval_text(row.interval) if row.interval else "",
            "eps": row.eps, "y": i * (BAR_HEIGHT + BAR_GAP), "width": round(BAR_WIDTH * accuracy, 1),
            "summary": row.key in ("unseen_mean", "unseen_union", "corruptions_mean"),
        })
    block = result.get("unseen") if isinstance(result, Mapping) else None
    info = block if isinstance(block, Mapping) else {}
    return {
        "bars": bars, "family": info.get("family"), "steps": info.get("steps"),
        "label_width": LABEL_WIDTH, "plot_width": BAR_WIDTH, "bar_height": BAR_HEIGHT,
        "height": len(bars) * (BAR_HEIGHT + BAR_GAP), "width": LABEL_WIDTH + BAR_WIDTH + 150,
    }


def unseen_compare(jobs: Sequence[Job]) -> dict[str, Any] | None:
    """The compare page's unseen table: one row per line of ``unseen_rows``, one column per job
    (None when no job has an unseen result)."""
    per_job = [(job, {row.key: row for row in unseen_rows(job.result)}) for job in jobs]
    per_job = [(job, rows) for job, rows in per_job if rows]
    if not per_job:
        return None
    keys: dict[str, str] = {}
    for _, rows in per_job:
        for key, row in rows.items():
            keys.setdefault(key, row.label)
    table = []
    for key, label in keys.items():
        cells = []
        for _, rows in per_job:
            row = rows.get(key)
            cells.append({
                "accuracy": row.accuracy if row else None,
                "interval": display.interval_text(row.interval) if row and row.interval else "",
            })
        table.append({"key": key, "label": label, "cells": cells})
    return {"jobs": [{"id": job.id, "label": job_label(job)} for job, _ in per_job], "rows": table}
