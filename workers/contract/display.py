"""How results are shown: the rules the CLI (``rampctl``) and the web pages share. Torch-free.

- Accuracies are percentages with one decimal and their 95 % interval in brackets:
  ``62.0% [52.2, 70.9]`` (``accuracy_text``); the interval comes from ``metrics["intervals"]`` or,
  for results that predate it, from the accuracy and ``n`` (``workers.contract.metrics``).
- A check's verdict is one of ``passed``, ``failed``, ``inconclusive``; only ``passed`` is ever
  drawn as a tick (``STATUS_MARK``). Reports written before checks had a status are ``legacy``:
  they may have tested nothing, so they get no tick either.
- p values: ``p = 0.038`` with two significant digits, ``p < 0.0001`` below that; a difference is
  called significant only at p < 0.05 (``workers.contract.stats.SIGNIFICANCE``).
- Sweeps: a swept key's header (``params.ramp.lambda`` -> ``ramp.lambda``, ``epsilons.l1`` ->
  ``eps_l1``), its values (``format_value``), a trial's accuracies (its final evaluation, else its
  last epoch's held-out check) and the 2-D grid (``union_grid``). One rule for a grid cell: the
  trial's **monitor** union accuracy -- every trial has one (its own final evaluation, kept under
  ``final.monitor`` for the best trial once the default suite re-evaluated it, else its last
  epoch's held-out check) -- so the cells are comparable, and the grid says they are upper bounds.
  The best trial's default-suite number is shown beside the grid, never in it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from workers.contract.metrics import (
    ACCURACY_LABELS,
    CHECK_FAILED,
    CHECK_INCONCLUSIVE,
    CHECK_PASSED,
    PRECISION_SCHEMES,
    intervals,
    precision_label,
)
from workers.contract.norms import NORMS
from workers.contract.results import is_upper_bound
from workers.contract.stats import verdict

LEGACY = "legacy"
STATUS_MARK: dict[str, str] = {CHECK_PASSED: "✓", CHECK_FAILED: "✗", CHECK_INCONCLUSIVE: "?", LEGACY: "?"}
CHECK_GROUPS: tuple[tuple[str, str], ...] = (
    ("curves", "accuracy vs radius"), ("iterations", "10x iterations"), ("square", "black-box Square"),
    ("ce_vs_dlr", "APGD-T vs APGD-CE"),
)
SANITY_LABELS: dict[str, str] = {
    "probabilities": "logits, not probabilities", "determinism": "deterministic forward",
    "dynamic": "no backward in forward", "classes": "classes for targeted attacks",
    "gradients": "non-zero, finite input gradients",
}


def number(value: Any) -> bool:
    """A real, finite number (JSON booleans are not numbers here)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float (stored before such values were refused)
        return False


def pct(value: Any) -> str:
    """A fraction as a percentage with one decimal; '-' when absent."""
    return f"{100 * value:.1f}%" if number(value) else "-"


def interval_text(interval: tuple[float, float] | None) -> str:
    return f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else ""


def accuracy_text(metrics: Mapping[str, Any] | None, key: str) -> str:
    """``62.0% [52.2, 70.9]``: the accuracy and its 95 % interval ('-' when absent)."""
    value = metrics.get(key) if isinstance(metrics, Mapping) else None
    if not number(value):
        return "-"
    interval = intervals(metrics).get(key)
    return f"{pct(value)} {interval_text(interval)}".rstrip()


def precision_text(metrics: Mapping[str, Any] | None) -> str:
    """The precision scheme and what it means (``fp32``: "float32 attacks and decisions")."""
    label = precision_label(metrics)
    meaning = PRECISION_SCHEMES.get(label)
    return f"{label} ({meaning})" if meaning else label


def p_text(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def check_status(check: Mapping[str, Any]) -> str:
    """A check's verdict; ``legacy`` for a report from before checks had one."""
    status = check.get("status")
    if status in (CHECK_PASSED, CHECK_FAILED, CHECK_INCONCLUSIVE):
        return str(status)
    return LEGACY


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def ordered_norms(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    return [n for n in NORMS if n in keys] + sorted(k for k in keys if k not in NORMS)


def _detail(group: str, c: Mapping[str, Any]) -> str:
    if group == "curves":
        acc = [a for a in c.get("accuracy") or [] if number(a)]
        text = f"{pct(acc[0]) if acc else '-'} at radius 0 -> {pct(acc[-1]) if acc else '-'} unbounded"
        if c.get("rises_at"):
            text += f"; rises at {', '.join(f'{r:g}' for r in c['rises_at'] if number(r))}"
        return text
    if group == "iterations":
        return f"{c.get('steps', '-')} iterations fooled {c.get('moved', '-')} robust point(s)"
    if group == "square" and c.get("source") == "suite":
        return (f"the suite's Square ({c.get('queries', '-')} queries) fooled {c.get('found', '-')} of the "
                "white-box stages' survivors")
    if group == "square":
        return f"Square ({c.get('queries', '-')} queries) fooled {c.get('found', '-')} robust point(s)"
    return f"APGD-T fooled {c.get('found', '-')} of APGD-CE's survivors"


def check_rows(checks: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One row per check (and norm): ``check``, ``norm``, ``n``, ``status``, ``mark``, ``detail``."""
    checks = _mapping(checks)
    rows: list[dict[str, Any]] = []
    for group, label in CHECK_GROUPS:
        per_norm = _mapping(checks.get(group))
        for norm in ordered_norms(per_norm):
            c = _mapping(per_norm[norm])
            status = check_status(c)
            rows.append({"check": label, "norm": ACCURACY_LABELS.get(norm, norm), "n": c.get("n"),
                         "status": status, "mark": STATUS_MARK[status], "detail": _detail(group, c)})
    for name, c in _mapping(checks.get("sanity")).items():
        c = _mapping(c)
        status = check_status(c)
        rows.append({"check": f"sanity: {SANITY_LABELS.get(name, name)}", "norm": "all", "n": c.get("n"),
                     "status": status, "mark": STATUS_MARK[status], "detail": ""})
    return rows


def checks_summary(checks: Mapping[str, Any] | None) -> str:
    """One line: the overall verdict of a checks report and what it rests on."""
    checks = _mapping(checks)
    if not checks:
        return "no checks"
    status = check_status(checks) if "status" in checks else LEGACY
    if status == LEGACY:
        return (f"legacy checks on {checks.get('n', '?')} points (before verdicts had a status: they may "
                "have tested nothing)")
    need = checks.get("min_points", 50)
    return f"checks {status} (rigour checks on {checks.get('n', 0)} points; {need} needed to decide)"


def pair_verdict(pair: Mapping[str, Any]) -> str:
    """significant, not significant, or inconclusive when too few points differ for any verdict (from
    the counts, so a report stored before the ``decidable`` field reads the same)."""
    return verdict(float(pair["p"]), int(pair["only_a"]), int(pair["only_b"]))


def pair_line(pair: Mapping[str, Any]) -> str:
    """``A vs B, union: +3.2 points (12 vs 4 points only one got right), p = 0.038 (significant)``."""
    diff = 100 * float(pair["difference"])
    verdict = pair_verdict(pair)
    return (f"{pair['a']} vs {pair['b']}, {ACCURACY_LABELS.get(pair['metric'], pair['metric'])}: "
            f"{diff:+.1f} points ({pair['only_a']} vs {pair['only_b']} points only one got right, "
            f"n = {pair['n']}), {p_text(float(pair['p']))} ({verdict}; Holm {p_text(float(pair['p_holm']))})")


# ------------------------------------------------------------------------------------- sweeps

# The best trial's default-suite number is the sweep's result, shown beside the grid, never in it.
GRID_LABEL = "union accuracy, monitor suite (an upper bound)"


def suite_label(metrics: Mapping[str, Any] | None) -> str:
    """The suite's name, marked when its numbers over-state robustness ('-' without metrics)."""
    if not isinstance(metrics, Mapping) or not metrics:
        return "-"
    suite = metrics.get("suite", "-")
    name = ",".join(map(str, suite)) if isinstance(suite, list) else str(suite)
    return f"{name} (upper bound)" if is_upper_bound(metrics) else name


def config_header(key: str) -> str:
    """A short header for a param_space key: ``params.ramp.lambda`` -> ``ramp.lambda``,
    ``epsilons.l1`` -> ``eps_l1``."""
    if key.startswith("params."):
        return key[len("params."):]
    if key.startswith("epsilons."):
        return "eps_" + key[len("epsilons."):]
    return key


def format_value(value: Any) -> str:
    """A swept value: floats with four significant digits, '-' for None."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def cell_key(value: Any) -> str:
    """The grid cell a swept value falls in: values come back from JSON, so 5 and 5.0 are one cell."""
    return repr(float(value)) if number(value) else repr(value)


def trial_accuracies(trial: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's final evaluation, else its last epoch's held-out check (``trial``: ``final``,
    ``metrics`` as the trial listing gives them)."""
    final = trial.get("final")
    if isinstance(final, Mapping) and final:
        return dict(final)
    history = trial.get("metrics") or []
    return dict(history[-1]) if history and isinstance(history[-1], Mapping) else {}


def monitor_union(trial: Mapping[str, Any]) -> float | None:
    """The number a grid cell shows for ``trial``: its monitor-suite union accuracy (module docstring)."""
    final = _mapping(trial.get("final"))
    if final and is_upper_bound(final) and number(final.get("union")):
        return float(final["union"])
    monitor = _mapping(final.get("monitor"))
    if number(monitor.get("union")):
        return float(monitor["union"])
    history = trial.get("metrics") or []
    last = _mapping(history[-1]) if history else {}
    return float(last["union"]) if number(last.get("union")) else None


def grid_axes(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """The two keys (rows, columns) of a sweep over exactly two grid axes; None otherwise."""
    space = _mapping(spec.get("param_space"))
    keys = list(space)
    if len(keys) != 2 or not all(isinstance(space[k], Mapping) and "grid" in space[k] for k in keys):
        return None
    return keys[0], keys[1]


def union_grid(spec: Mapping[str, Any], trials: Iterable[Mapping[str, Any]],
               best_id: str | None = None) -> dict[str, Any] | None:
    """The monitor union accuracy over a 2-D grid sweep (mean over a cell's repeated samples):
    ``row_key``, ``col_key`` (headers), ``rows``, ``cols`` (formatted values), ``cells`` (row-major:
    ``row``, ``col``, ``value``, ``trials``, ``best``) and ``label``; None when not a 2-D grid."""
    axes = grid_axes(spec)
    if axes is None:
        return None
    row_key, col_key = axes
    space = spec["param_space"]
    rows, cols = list(space[row_key]["grid"]), list(space[col_key]["grid"])
    values: dict[tuple[str, str], list[float]] = {}
    members: dict[tuple[str, str], list[str]] = {}
    for t in trials:
        config = _mapping(t.get("config"))
        key = (cell_key(config.get(row_key)), cell_key(config.get(col_key)))
        members.setdefault(key, []).append(str(t.get("trial_id")))
        value = monitor_union(t)
        if value is not None:
            values.setdefault(key, []).append(value)
    cells = []
    for r in rows:
        for c in cols:
            key = (cell_key(r), cell_key(c))
            vs, ids = values.get(key) or [], members.get(key) or []
            cells.append({"row": format_value(r), "col": format_value(c),
                          "value": sum(vs) / len(vs) if vs else None, "trials": ids,
                          "best": best_id is not None and best_id in ids})
    return {"row_key": config_header(row_key), "col_key": config_header(col_key),
            "rows": [format_value(r) for r in rows], "cols": [format_value(c) for c in cols],
            "cells": cells, "label": GRID_LABEL}
