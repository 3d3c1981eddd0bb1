"""What the pages show, computed from jobs, events and trials: plain dicts and lists for the
templates and the charts' JSON. Pure functions (no database, no request), so each rule -- which
number is an upper bound, which trial is best, what a heat-map cell holds -- is tested on its own.

Accuracies stay fractions in [0, 1] here; the templates and the script format them as percentages.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from service.db.models import Job, JobEvent, Trial
from service.jobs.comparison import compare_jobs, job_label
from service.state import ACTIVE, RETRYABLE, TERMINAL, JobStatus
from service.sweeps import trials as trial_store
from workers.contract import display
from workers.contract.layout import WEIGHTS_FILE
from workers.contract.metrics import (
    ACCURACY_KEYS,
    ACCURACY_LABELS,
    float32_decided,
    intervals,
    precision_label,
)
from workers.contract.norms import NORMS
from workers.contract.results import is_upper_bound, result_notes, result_warnings
from workers.contract.status import is_settled

LABELS = ACCURACY_LABELS
CANCELLABLE = frozenset({JobStatus.QUEUED, *ACTIVE}) - {JobStatus.CANCELLING}
# The CLI's display rules, shared (workers.contract.display).
fmt_value = display.format_value
config_header = display.config_header
suite_label = display.suite_label


# ------------------------------------------------------------------------------------ formatting


def number(value: Any) -> bool:
    """A real, finite number a float can hold (JSON booleans are not numbers here; an integer of
    hundreds of digits, stored before such bodies were refused, is not one either)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal; '-' when absent."""
    return f"{100 * value:.1f}%" if number(value) else "-"




def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not number(seconds) or seconds < 0:
        return "-"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"






# ------------------------------------------------------------------------------------ one job


def spec_field(spec: Mapping[str, Any], key: str) -> Any:
    """A field of a job's spec; a sweep's comes from its base spec."""
    if key in spec:
        return spec[key]
    base = spec.get("base")
    return base.get(key) if isinstance(base, Mapping) else None


def progress(job: Job) -> dict[str, Any]:
    """How far the job is: a fraction (None when unknown) and a short label."""
    if job.status == JobStatus.SUCCEEDED:
        return {"fraction": 1.0, "label": "done"}
    data = job.progress if isinstance(job.progress, Mapping) else {}
    step, total = data.get("step"), data.get("total_steps")
    fraction = data.get("fraction")
    if not number(fraction) and number(step) and number(total) and total > 0:
        fraction = step / total
    if not number(fraction):
        return {"fraction": None, "label": "-"}
    phase = data.get("phase")
    counts = f"{int(step)}/{int(total)}" if number(step) and number(total) else ""
    label = " ".join(str(p) for p in (phase, counts) if p) or pct(fraction)
    return {"fraction": max(0.0, min(1.0, float(fraction))), "label": label}


def duration_s(job: Job, now: datetime) -> float | None:
    """Time since the job started running (or was dispatched), to its end or to ``now``."""
    start = job.running_at or job.dispatching_at
    if start is None:
        return None
    ends = [t for t in (job.succeeded_at, job.failed_at, job.cancelled_at) if t is not None]
    end = max(ends) if job.status in TERMINAL and ends else now
    return (end - start).total_seconds()


def job_row(job: Job, now: datetime) -> dict[str, Any]:
    """One line of the jobs table."""
    spec = job.spec or {}
    result = job.result if isinstance(job.result, Mapping) else {}
    return {
        "id": job.id,
        "status": job.status,
        "kind": job.kind,
        "method": job.method or "-",
        "dataset": spec_field(spec, "dataset") or "-",
        "model": spec_field(spec, "model") or "-",
        "source_job_id": spec.get("source_job_id"),
        "progress": progress(job),
        "clean": result.get("clean"),
        "union": result.get("union"),
        "intervals": {k: display.interval_text(v) for k, v in intervals(result).items()},
        "upper_bound": bool(result) and is_upper_bound(result),
        "warnings": len(result_warnings(result)) if result else 0,
        "created": fmt_time(job.created_at),
        "duration": fmt_duration(duration_s(job, now)),
        "terminal": settled(job),
    }


def settled(job: Job) -> bool:
    """Whether the page can stop refreshing: a failure with an automatic retry left is not the end
    (the dispatcher queues its next attempt), as for the event streams."""
    return is_settled(job.status, job.attempt, job.max_retries)


def actions(job: Job) -> dict[str, bool]:
    """Which buttons the job page offers."""
    status = JobStatus(job.status)
    return {
        "cancel": status in CANCELLABLE,
        "retry": status in RETRYABLE,
        "finetune": status == JobStatus.SUCCEEDED and job.kind in ("train", "finetune", "sweep"),
        "evaluate": status == JobStatus.SUCCEEDED and job.kind in ("train", "finetune", "sweep"),
    }


def timeline(job: Job, status_events: Iterable[JobEvent]) -> list[dict[str, Any]]:
    """The job's status changes, oldest first, from its ``status`` events."""
    rows = [{"at": fmt_time(job.created_at), "attempt": 1, "from": "", "to": "queued",
             "reason": "submitted", "error": None}]
    for ev in status_events:
        data = ev.data or {}
        rows.append({
            "at": fmt_time(ev.created_at), "attempt": ev.attempt, "from": str(data.get("from", "")),
            "to": str(data.get("to", "")), "reason": data.get("reason"), "error": data.get("error"),
        })
    return rows


def epoch_series(history: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-epoch curves from ``metrics`` events (``EpochReport`` dicts): the held-out monitor
    accuracies (an upper bound), the loss parts and, under gradient projection, the cosine (and
    angle) between the natural and adversarial updates. An epoch reported again by a later attempt
    (a retry resumes from its checkpoint) replaces the earlier report."""
    by_epoch: dict[int, Mapping[str, Any]] = {}
    for report in history:
        epoch = report.get("epoch")
        if number(epoch):
            by_epoch[int(epoch)] = report
    epochs = sorted(by_epoch)
    reports = [by_epoch[e] for e in epochs]
    monitors = [r.get("monitor") if isinstance(r.get("monitor"), Mapping) else {} for r in reports]
    losses = [r.get("losses") if isinstance(r.get("losses"), Mapping) else {} for r in reports]
    parts: list[str] = []
    for loss in losses:
        parts += [p for p in loss if p not in parts]
    suites = {str(r.get("monitor_suite", "monitor")) for r in reports if r.get("monitor")}
    return {
        "epochs": epochs,
        "accuracy": {k: [_num(m.get(k)) for m in monitors] for k in ACCURACY_KEYS},
        "has_monitor": any(monitors),
        "monitor_suite": ", ".join(sorted(suites)) or "monitor",
        # The monitor suite is an upper bound unless a report says otherwise.
        "upper_bound": all(r.get("monitor_upper_bound", True) for r in reports if r.get("monitor")),
        "losses": {p: [_num(loss.get(p)) for loss in losses] for p in parts},
        # Gradient projection's cosine between the epoch's natural and adversarial updates.
        "grad_cosine": [_num(r.get("grad_cosine")) for r in reports],
        "grad_angle_deg": [_num(r.get("grad_angle_deg")) for r in reports],
        "has_gradients": any(number(r.get("grad_cosine")) for r in reports),
    }


def _num(value: Any) -> float | None:
    return float(value) if number(value) else None


def results(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The final evaluation's row (accuracies with their 95 % intervals), its warnings and notes,
    and the checks, or None before a result."""
    if not isinstance(result, Mapping) or not any(number(result.get(k)) for k in ACCURACY_KEYS):
        return None
    checks = result.get("checks") if isinstance(result.get("checks"), Mapping) else {}
    epsilons = result.get("epsilons") if isinstance(result.get("epsilons"), Mapping) else {}
    ranges = intervals(result)
    return {
        "accuracy": {k: result.get(k) for k in ACCURACY_KEYS},
        "intervals": {k: display.interval_text(ranges.get(k)) for k in ACCURACY_KEYS},
        "suite": suite_label(result),
        "upper_bound": is_upper_bound(result),
        "n": result.get("n"),
        "precision": display.precision_text(result),
        "float32": float32_decided(result),
        "epsilons": " ".join(f"{LABELS.get(k, k)}={fmt_value(epsilons[k])}" for k in _ordered_norms(epsilons))
        or "-",
        "warnings": result_warnings(result),
        "notes": result_notes(result),
        "checks": display.check_rows(checks),
        "checks_n": checks.get("n"),
        "checks_status": display.check_status(checks) if checks else None,
        "checks_summary": display.checks_summary(checks),
    }


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def radius_curves(result: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The accuracy-vs-radius curve of each norm from the rigour checks (``checks.curves``)."""
    curves = _mapping(_mapping(result).get("checks")).get("curves")
    out = []
    for norm in _ordered_norms(_mapping(curves)):
        c = curves[norm]
        pairs = [(r, a) for r, a in zip(c.get("radius") or [], c.get("accuracy") or [], strict=False)
                 if number(r)]
        out.append({
            "norm": norm, "label": LABELS.get(norm, norm),
            "radius": [float(r) for r, _ in pairs], "accuracy": [_num(a) for _, a in pairs],
            "eps": _num(c.get("eps")), "unbounded": _num(c.get("unbounded")),
            "status": display.check_status(_mapping(c)),
        })
    return out


def _ordered_norms(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    return [n for n in NORMS if n in keys] + sorted(k for k in keys if k not in NORMS)


# ------------------------------------------------------------------------------------- sweeps


def _listed(trial: Trial) -> dict[str, Any]:
    """A trial row as the trial listing (``GET /v1/jobs/{id}/trials``) gives it to the CLI."""
    return {"trial_id": trial.trial_id, "config": trial.config or {}, "final": trial.final,
            "metrics": trial.metrics or []}


def trial_accuracies(trial: Trial) -> dict[str, Any]:
    """A trial's final evaluation, else its last epoch's held-out check (``display``'s rule)."""
    return display.trial_accuracies(_listed(trial))


def union_heatmap(spec: Mapping[str, Any], trials: Sequence[Trial],
                  best_id: str | None) -> dict[str, Any] | None:
    """``display.union_grid`` (the CLI's grid: every cell a monitor number, labelled an upper
    bound) in the chart's shape; None when the sweep is not a 2-D grid."""
    grid = display.union_grid(spec, [_listed(t) for t in trials], best_id)
    if grid is None:
        return None
    cells = [{"x": c["col"], "y": c["row"], "v": c["value"], "upper_bound": c["value"] is not None,
              "trials": c["trials"], "best": c["best"]} for c in grid["cells"]]
    return {"x_key": grid["col_key"], "y_key": grid["row_key"], "x": grid["cols"], "y": grid["rows"],
            "cells": cells, "label": grid["label"]}


def sweep_view(job: Job, trials: Sequence[Trial]) -> dict[str, Any]:
    """The trial table (best trial first-class) and the heat map of a sweep."""
    spec = job.spec or {}
    metric, mode = str(spec.get("metric", "union")), str(spec.get("mode", "max"))
    keys = list(_mapping(spec.get("param_space")))
    best = trial_store.best(trials, metric, mode)
    best_id = best.trial_id if best is not None else None
    rows = []
    for t in trials:
        acc = trial_accuracies(t)
        checkpoint = t.checkpoint
        rows.append({
            "trial_id": t.trial_id, "index": t.trial_index, "attempt": t.attempt, "status": t.status,
            "config": [fmt_value((t.config or {}).get(k)) for k in keys],
            "accuracy": {k: acc.get(k) for k in ACCURACY_KEYS},
            "suite": suite_label(acc) if t.final else ("monitor (upper bound)" if acc else "-"),
            "score": trial_store.score(t, metric),
            "checkpoint": checkpoint,
            "checkpoint_file": f"{checkpoint.rstrip('/')}/{WEIGHTS_FILE}" if checkpoint else None,
            "usable": t.status in trial_store.FINISHED_WITH_CHECKPOINT and bool(checkpoint),
            "best": t.trial_id == best_id,
            "error": t.error,
        })
    return {
        "metric": metric, "mode": mode, "columns": [config_header(k) for k in keys],
        "best_id": best_id, "best_score": trial_store.score(best, metric) if best is not None else None,
        "rows": rows, "heatmap": union_heatmap(spec, trials, best_id),
        "counts": _counts(t.status for t in trials),
    }


def _counts(statuses: Iterable[str]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for s in statuses:
        counts[s] += 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# ------------------------------------------------------------------------------------ compare


def compare_view(jobs: Sequence[Job], histories: Mapping[int, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Jobs side by side: one row per job (the paper's Table 3: clean, per-norm, union), their
    accuracy-vs-radius curves overlaid per norm, and their per-epoch monitor union accuracy."""
    rows = []
    for job in jobs:
        res = results(job.result)
        rows.append({
            "id": job.id, "label": job_label(job), "kind": job.kind, "status": job.status,
            "dataset": spec_field(job.spec or {}, "dataset") or "-",
            "model": spec_field(job.spec or {}, "model") or "-",
            "accuracy": res["accuracy"] if res else dict.fromkeys(ACCURACY_KEYS),
            "intervals": res["intervals"] if res else dict.fromkeys(ACCURACY_KEYS, ""),
            "suite": res["suite"] if res else "-", "n": res["n"] if res else None,
            "precision": precision_label(job.result), "warnings": res["warnings"] if res else [],
        })
    paired = compare_jobs(jobs)
    pairs = [p | {"label": LABELS.get(p["metric"], p["metric"]), "p_text": display.p_text(p["p"]),
                  "p_holm_text": display.p_text(p["p_holm"]), "verdict": display.pair_verdict(p)}
             for p in paired["pairs"]]
    curves = []
    per_job = {job.id: {c["norm"]: c for c in radius_curves(job.result)} for job in jobs}
    norms = _ordered_norms({n for curves_of in per_job.values() for n in curves_of})
    for norm in norms:
        radii = sorted({r for curves_of in per_job.values() if norm in curves_of
                        for r in curves_of[norm]["radius"]})
        datasets = []
        for job in jobs:
            c = per_job[job.id].get(norm)
            if c is None:
                continue
            at = dict(zip(c["radius"], c["accuracy"], strict=True))
            datasets.append({"label": job_label(job), "data": [at.get(r) for r in radii]})
        curves.append({"norm": norm, "label": LABELS.get(norm, norm), "labels": [fmt_value(r) for r in radii],
                       "datasets": datasets})
    epochs = []
    for job in jobs:
        series = epoch_series(histories.get(job.id, []))
        if series["has_monitor"]:
            epochs.append({"label": job_label(job), "epochs": series["epochs"],
                           "union": series["accuracy"]["union"]})
    return {"rows": rows, "curves": curves, "epochs": epochs, "pairs": pairs, "notes": paired["notes"],
            "comparisons": paired["comparisons"]}
