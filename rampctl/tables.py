"""Result tables: one row per run (a training run, an evaluation, a service job). Torch-free.

``print_results_table(rows)`` prints clean / per-norm / union accuracy side by side; a row is a
``metrics.json``-style mapping plus an optional ``"name"``. Missing metrics print as "-". A row
from an upper-bound suite (``monitor``) says so in its suite column, and every row's failed
evaluation-rigour checks print as warnings under the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from workers.contract.results import is_upper_bound, result_warnings

# (metric key, column header)
ACCURACY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("clean", "clean"), ("linf", "l_inf"), ("l2", "l_2"), ("l1", "l_1"), ("union", "union"),
)


def format_fraction(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with one decimal; '-' when absent."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{100 * value:.1f}%"


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
    """The rigour checks of a metrics row: "passed", or one line per warning (failed checks, and
    an upper-bound suite)."""
    warnings = result_warnings(row)
    if warnings:
        return [f"warning: {w}" for w in warnings]
    checks = row.get("checks")
    return [f"rigour checks on {checks.get('n', '?')} points: passed"] if isinstance(checks, Mapping) else []


def results_table(rows: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Table:
    table = Table(title=title)
    table.add_column("run")
    for _, header in ACCURACY_COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("n", justify="right")
    table.add_column("suite")
    table.add_column("epsilons")
    for i, row in enumerate(rows):
        table.add_row(
            str(row.get("name", i + 1)),
            *(format_fraction(row.get(key)) for key, _ in ACCURACY_COLUMNS),
            str(row.get("n", "-")),
            suite_label(row),
            format_epsilons(row.get("epsilons")),
        )
    return table


def print_results_table(
    rows: Sequence[Mapping[str, Any]], *, title: str | None = None, console: Console | None = None
) -> None:
    out = console or Console()
    out.print(results_table(rows, title=title))
    for i, row in enumerate(rows):
        for line in check_lines(row):
            style = "yellow" if line.startswith("warning") else None
            out.print(f"{row.get('name', i + 1)}: {line}", style=style, highlight=False)
