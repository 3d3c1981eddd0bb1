"""The CLI's tables, built but not printed (``rampctl.console`` prints them). Torch-free.

``results_table(rows)``: clean / per-norm / union accuracy with their 95 % intervals side by
side, one row per run (a training run, an evaluation, a service job); a row is a
``metrics.json``-style mapping plus an optional ``"name"``. Missing metrics show as "-". A row from
an upper-bound suite (``monitor``) says so in its suite column, the precision column names how its
robust flags were decided, and ``check_lines(row)`` words its checks (verdict, warnings, what could
not be decided). ``pair_lines(report)`` words the paired tests of ``GET /v1/compare``. The shared
rules live in ``workers.contract.display``.

``unseen_table(rows)``: the ``unseen`` suite's per-attack accuracies, their mean, the unseen union
and the corruptions' mean (None when no row has them).

``jobs_table(jobs)``: the service's job list. ``tokens_table(tokens, now)``: the API tokens of
``rampctl token list`` (never their secrets: only hashes are stored).
``trials_table(listing)``: a sweep's trials (config columns, status, clean / per-norm / union, the
best trial starred); ``union_grid(listing, spec)``: for a sweep over exactly two grid keys, the
union accuracy over the grid (rows: the first key's values, columns: the second's; the mean over
samples when ``num_samples`` > 1). A trial's accuracies are its final evaluation once it has one,
else its last epoch's held-out check.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.table import Table

from workers.contract.display import accuracy_text, checks_summary, interval_text, pair_line
from workers.contract.results import is_upper_bound, result_notes, result_warnings
from workers.contract.status import JobStatus
from workers.contract.unseen import unseen_rows

# (metric key, column header)
ACCURACY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("clean", "clean"), ("linf", "l_inf"), ("l2", "l_2"), ("l1", "l_1"), ("union", "union"),
)


def format_fraction(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal; '-' when absent."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{100 * value:.1f}%"


def gradient_text(cosine: float, angle_deg: float | None = None) -> str:
    """GP's cosine between the epoch's natural and adversarial updates, with its angle."""
    angle = f" ({angle_deg:.0f} deg)" if angle_deg is not None else ""
    return f"cos(nat, adv) {cosine:+.3f}{angle}"


def format_epsilons(epsilons: Any) -> str:
    if not isinstance(epsilons, Mapping) or not epsilons:
        return "-"
    return " ".join(f"{norm}={eps:.4g}" for norm, eps in epsilons.items())


def suite_label(row: Mapping[str, Any]) -> str:
    """The suite's name, marked when its numbers are an upper bound on robustness."""
    suite = row.get("suite", "-")
    name = ",".join(suite) if isinstance(suite, list) else str(suite)
    return f"{name} (upper bound)" if is_upper_bound(row) else name


def check_lines(row: Mapping[str, Any]) -> list[str]:
    """The checks of a metrics row: the verdict line, one line per warning (failed checks, an
    upper-bound suite, a legacy precision scheme) and per note (what could not be decided)."""
    if not any(isinstance(row.get(key), int | float) for key, _ in ACCURACY_COLUMNS):
        return []  # no result yet
    checks = row.get("checks")
    lines = [checks_summary(checks)] if isinstance(checks, Mapping) else []
    lines += [f"warning: {w}" for w in result_warnings(row)]
    return lines + [f"note: {n}" for n in result_notes(row)]


def results_table(rows: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Table:
    table = Table(title=title, caption="brackets: 95 % interval (Wilson) for n")
    table.add_column("run")
    for _, header in ACCURACY_COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("n", justify="right")
    table.add_column("suite")
    table.add_column("precision")
    table.add_column("epsilons")
    for i, row in enumerate(rows):
        table.add_row(
            str(row.get("name", i + 1)),
            *(accuracy_text(row, key) for key, _ in ACCURACY_COLUMNS),
            str(row.get("n", "-")),
            suite_label(row),
            str(row.get("precision", "-")),
            format_epsilons(row.get("epsilons")),
        )
    return table


def unseen_table(rows: Sequence[Mapping[str, Any]]) -> Table | None:
    """The unseen suite's accuracies (each adversary, their mean, the unseen union, the
    corruptions' mean), one column per run that has them; None when no run has them."""
    runs = [(str(row.get("name", i + 1)), unseen_rows(row)) for i, row in enumerate(rows)]
    runs = [(name, lines) for name, lines in runs if lines]
    if not runs:
        return None
    table = Table(title="unseen adversaries", caption="brackets: 95 % interval (Wilson) for n")
    table.add_column("attack")
    table.add_column("eps", justify="right")
    for name, _ in runs:
        table.add_column(name, justify="right")
    keys: dict[str, tuple[str, float | None]] = {}
    for _, lines in runs:
        for line in lines:
            keys.setdefault(line.key, (line.label, line.eps))
    for key, (label, eps) in keys.items():
        cells = []
        for _, lines in runs:
            found = next((line for line in lines if line.key == key), None)
            if found is None or found.accuracy is None:
                cells.append("-")
            else:
                interval = f" {interval_text(found.interval)}" if found.interval else ""
                cells.append(f"{format_fraction(found.accuracy)}{interval}")
        table.add_row(label, "-" if eps is None else f"{eps:.4g}", *cells)
    return table


def pair_lines(report: Mapping[str, Any]) -> list[str]:
    """One line per paired difference of a ``/v1/compare`` report, then its notes."""
    lines = [pair_line(p) for p in report.get("pairs") or []]
    if lines:
        lines.insert(0, f"paired differences (exact McNemar, {report.get('comparisons')} tests; "
                        f"significant at p < {report.get('alpha', 0.05)}):")
    return lines + [f"note: {n}" for n in report.get("notes") or []]


# ------------------------------------------------------------------------------------- jobs


def job_progress(job: Mapping[str, Any]) -> str:
    """A job's progress as a percentage ("-" before the first progress event)."""
    if job["status"] == JobStatus.SUCCEEDED:
        return "100%"
    fraction = (job.get("progress") or {}).get("fraction")
    return f"{100 * fraction:.0f}%" if isinstance(fraction, int | float) else "-"


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title=None)
    for col in ("id", "kind", "method", "dataset", "status", "attempt", "progress", "union", "created"):
        table.add_column(col, justify="right" if col in ("id", "attempt", "progress", "union") else "left")
    for j in jobs:
        # A listing's summary names method and dataset itself; a full job (older services) in spec.
        spec = j.get("spec") or {}
        union = format_fraction((j.get("metrics") or {}).get("union"))
        created = j["created_at"][:19].replace("T", " ")
        method, dataset = j.get("method") or spec.get("method"), j.get("dataset") or spec.get("dataset")
        table.add_row(str(j["id"]), j["kind"], method or "-", dataset or "-",
                      j["status"], str(j["attempt"]), job_progress(j), union, created)
    return table


def format_time(value: datetime | None) -> str:
    """A UTC timestamp to the minute; '-' when absent."""
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def tokens_table(tokens: Sequence[Mapping[str, Any]], now: datetime) -> Table:
    """One row per token: ``id``, ``name`` (its owner's), ``owner_id``, ``owner_tokens`` (how many
    tokens that owner has: more than one was made deliberately, ``--existing-owner``),
    ``is_admin``, ``created_at``, ``expires_at``, ``last_used_at``, ``revoked_at`` (datetimes or
    None); times in UTC."""
    table = Table(title=None)
    columns = ("id", "name", "owner", "tokens of owner", "admin", "created", "expires", "last used",
               "revoked")
    for col in columns:
        table.add_column(col, justify="right" if col in ("id", "owner", "tokens of owner") else "left")
    for t in tokens:
        expires = format_time(t["expires_at"])
        if t["expires_at"] is not None and t["expires_at"] <= now:
            expires += " (expired)"
        owner = "-" if t.get("owner_id") is None else f"#{t['owner_id']}"
        table.add_row(str(t["id"]), t["name"], owner, str(t.get("owner_tokens", 1)),
                      "yes" if t["is_admin"] else "no", format_time(t["created_at"]),
                      expires, format_time(t["last_used_at"]), format_time(t["revoked_at"]))
    return table


# ----------------------------------------------------------------------------------- sweeps

BEST_MARK = "*"


def config_header(key: str) -> str:
    """A short column header for a param_space key: ``params.ramp.lambda`` -> ``ramp.lambda``,
    ``epsilons.l1`` -> ``eps_l1``."""
    if key.startswith("params."):
        return key[len("params."):]
    if key.startswith("epsilons."):
        return "eps_" + key[len("epsilons."):]
    return key


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def trial_accuracies(trial: Mapping[str, Any]) -> dict[str, Any]:
    """The final evaluation's accuracies, else the last epoch's held-out check."""
    if trial.get("final"):
        return dict(trial["final"])
    history = trial.get("metrics") or []
    return dict(history[-1]) if history else {}


def trials_table(listing: Mapping[str, Any], *, title: str | None = None) -> Table:
    keys = list(listing.get("param_keys") or [])
    table = Table(title=title)
    table.add_column("trial")
    for key in keys:
        table.add_column(config_header(key), justify="right")
    table.add_column("status")
    for _, header in ACCURACY_COLUMNS:
        table.add_column(header, justify="right")
    # What the trials are ranked by: the metric in the last epoch (the final evaluation may differ).
    table.add_column(f"score ({listing.get('metric', '-')})", justify="right")
    best = listing.get("best_trial_id")
    for t in listing.get("trials") or []:
        acc = trial_accuracies(t)
        name = t["trial_id"] + (f" {BEST_MARK}" if t["trial_id"] == best else "")
        score = t.get("score")
        is_accuracy = listing.get("metric") in dict(ACCURACY_COLUMNS)
        metric_cell = format_fraction(score) if is_accuracy else format_value(score)
        table.add_row(
            name,
            *(format_value((t.get("config") or {}).get(k)) for k in keys),
            str(t.get("status", "-")),
            *(format_fraction(acc.get(k)) for k, _ in ACCURACY_COLUMNS),
            metric_cell,
        )
    return table


def grid_axes(sweep_spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """The two grid keys of a sweep over exactly two grid axes (other axes: no grid view)."""
    space = sweep_spec.get("param_space") or {}
    keys = list(space)
    if len(keys) != 2 or not all("grid" in (space[k] or {}) for k in keys):
        return None
    return keys[0], keys[1]


def union_grid(listing: Mapping[str, Any], sweep_spec: Mapping[str, Any]) -> Table | None:
    """Union accuracy over the 2-D grid (mean over repeated samples), or None if not a 2-D grid."""
    axes = grid_axes(sweep_spec)
    if axes is None:
        return None
    row_key, col_key = axes
    rows = list(sweep_spec["param_space"][row_key]["grid"])
    cols = list(sweep_spec["param_space"][col_key]["grid"])
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for t in listing.get("trials") or []:
        config = t.get("config") or {}
        union = trial_accuracies(t).get("union")
        if isinstance(union, int | float) and not isinstance(union, bool):
            cells[(_cell_key(config.get(row_key)), _cell_key(config.get(col_key)))].append(float(union))
    table = Table(title=f"union accuracy: {config_header(row_key)} x {config_header(col_key)}")
    table.add_column(f"{config_header(row_key)} \\ {config_header(col_key)}")
    for c in cols:
        table.add_column(format_value(c), justify="right")
    for r in rows:
        values = [cells.get((_cell_key(r), _cell_key(c))) for c in cols]
        table.add_row(format_value(r), *(format_fraction(sum(v) / len(v)) if v else "-" for v in values))
    return table


def _cell_key(value: Any) -> str:
    # Grid values come back from JSON: 5 and 5.0 are the same cell.
    return json.dumps(float(value) if isinstance(value, int) and not isinstance(value, bool) else value)
