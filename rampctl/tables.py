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
samples when ``num_samples`` > 1). Headers, values, a trial's accuracies and what a grid cell
shows (every trial's monitor number, labelled an upper bound) are ``workers.contract.display``'s
rules, which the web pages use too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.table import Table

from workers.contract.display import (
    accuracy_text,
    checks_summary,
    config_header,
    format_value,
    interval_text,
    pair_line,
    suite_label,
    trial_accuracies,
)
from workers.contract.display import union_grid as grid_of
from workers.contract.results import result_notes, result_warnings
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


def check_lines(row: Mapping[str, Any]) -> list[str]:
    """The checks of a metrics row: the verdict line, one line per warning (failed checks, an
    upper-bound suite, a legacy precision scheme) and per note (what could not be decided)."""
    if not any(isinstance(row.get(key), int | float) for key, _ in ACCURACY_COLUMNS):
        return []  # no result yet
    checks = row.get("checks")
    lines = [checks_summary(checks)] if isinstance(checks, Mapping) else []
    lines += [f"warning: {w}" for w in result_warnings(row)]
    return lines + [f"note: {n}" for n in result_notes(row)]


def grouped_check_lines(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(who, line) for every row's check lines; a line every row with a result shares (the same
    suite warning on the same data, say) is given once, for "all N runs", not N times."""
    named = [(str(row.get("name", i + 1)), check_lines(row)) for i, row in enumerate(rows)]
    with_results = [lines for _, lines in named if lines]
    shared = set.intersection(*map(set, with_results)) if len(with_results) > 1 else set()
    first = with_results[0] if shared else []
    together = [(f"all {len(with_results)} runs", line) for line in first if line in shared]
    return together + [(name, line) for name, lines in named for line in lines if line not in shared]


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


def union_grid(listing: Mapping[str, Any], sweep_spec: Mapping[str, Any]) -> Table | None:
    """``display.union_grid`` as a table (the best trial's cell starred), or None if not a 2-D grid."""
    grid = grid_of(sweep_spec, listing.get("trials") or [], listing.get("best_trial_id"))
    if grid is None:
        return None
    table = Table(title=f"{grid['label']}: {grid['row_key']} x {grid['col_key']}")
    table.add_column(f"{grid['row_key']} \\ {grid['col_key']}")
    for c in grid["cols"]:
        table.add_column(c, justify="right")
    width = len(grid["cols"])
    for i, r in enumerate(grid["rows"]):
        row = grid["cells"][i * width:(i + 1) * width]
        table.add_row(r, *(format_fraction(c["value"]) + (f" {BEST_MARK}" if c["best"] else "") for c in row))
    return table
