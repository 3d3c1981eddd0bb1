"""Sweep commands: ``rampctl sweep SPEC`` (submit, optionally follow) and ``rampctl trials ID``; and
the sweep view ``rampctl results ID`` prints for a sweep (``print_sweep``).

The view is the trial table (config columns, status, clean / per-norm / union, the best trial
starred) and, for a sweep over exactly two grid keys, the union-accuracy grid (rows: the first
key's values, columns: the second's; the mean over samples when ``num_samples`` > 1). A trial's
accuracies are its final evaluation once it has one, else its last epoch's held-out check.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rampctl.science import USAGE_ERROR, console, err_console, fail
from rampctl.service_cmds import TERMINAL, ServiceClient
from rampctl.tables import ACCURACY_COLUMNS, format_fraction

BEST_MARK = "*"


# ------------------------------------------------------------------------------------ rendering


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


def render_sweep(job: Mapping[str, Any], listing: Mapping[str, Any], out: Console | None = None) -> None:
    """Print a sweep's trial table, then its union grid when it is a 2-D grid."""
    out = out or console
    spec = job.get("spec") or {}
    done = sum(1 for t in listing.get("trials") or [] if t.get("status") not in ("pending", "running"))
    title = (f"sweep #{job['id']} ({job['status']}): {done}/{len(listing.get('trials') or [])} trials done, "
             f"best by {listing.get('metric')} ({listing.get('mode')})")
    out.print(trials_table(listing, title=title))
    grid = union_grid(listing, spec)
    if grid is not None:
        out.print(grid)
    best = listing.get("best_trial_id")
    if best is not None:
        result = job.get("metrics") or {}
        ckpt = result.get("best_checkpoint") if result.get("best_trial_id") == best else None
        where = f" (checkpoint artifact: {ckpt})" if ckpt else ""
        out.print(f"best: {best}{where}; start from it with "
                  f'"init_from": {{"job_id": {job["id"]}, "trial": "{best}"}}', highlight=False)


def print_sweep(client: ServiceClient, job: Mapping[str, Any], out: Console | None = None) -> None:
    """What ``rampctl results ID`` prints for a sweep job."""
    render_sweep(job, client.get(f"/v1/jobs/{job['id']}/trials"), out)


# ------------------------------------------------------------------------------------- commands


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}", USAGE_ERROR)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as e:
            fail(f"{path} is not valid YAML: {e}", USAGE_ERROR)
    else:
        try:
            spec = json.loads(text)
        except ValueError as e:
            fail(f"{path} is not valid JSON: {e}", USAGE_ERROR)
    if not isinstance(spec, dict):
        fail(f"{path} must hold an object (a sweep spec)", USAGE_ERROR)
    if spec.setdefault("kind", "sweep") != "sweep":
        fail(f"{path} is a {spec['kind']!r} spec; `rampctl sweep` submits sweeps (use `rampctl submit`)",
             USAGE_ERROR)
    return spec


def _follow(client: ServiceClient, job_id: int) -> dict[str, Any]:
    """One line per finished trial until the sweep ends; returns the final job."""
    for etype, ev in client.stream_events(job_id):
        data = ev.get("data", {})
        if etype == "trial" and data.get("event") == "trial_end":
            final = data.get("final") or {}
            union = f" union={format_fraction(final.get('union'))}" if final else ""
            error = f" ({str(data['error'])[-200:]})" if data.get("error") else ""
            console.print(f"  {data.get('trial_id')} {data.get('status')}{union}{error}", highlight=False)
        elif etype == "status":
            console.print(f"  sweep {data.get('from')} -> {data.get('to')}", highlight=False)
    return client.get(f"/v1/jobs/{job_id}")


def sweep(
    spec_file: Annotated[Path, typer.Argument(help="sweep spec, JSON or YAML ('-' = JSON on stdin)")],
    idempotency_key: Annotated[str | None, typer.Option(help="a resubmit returns the same sweep")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="follow the trials, then print them")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the job id")] = False,
) -> None:
    """Submit a sweep: a base train/finetune spec, a param_space, the metric to optimise."""
    spec = _read_spec(spec_file)
    client = ServiceClient()
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job = client.post("/v1/jobs", json=spec, headers=headers)
    if quiet:
        print(job["id"])
    else:
        n = job["spec"].get("num_trials")
        console.print(f"submitted sweep {job['id']} ({n} trials, {job['status']})", highlight=False)
    if follow:
        final = _follow(client, job["id"])
        if not quiet:
            print_sweep(client, final)
        if final["status"] != "succeeded":
            if final.get("error"):
                err_console.print(f"sweep {final['id']} {final['status']}: {final['error']}", highlight=False)
            raise typer.Exit(1)


def trials(job_ids: Annotated[list[int], typer.Argument(help="one or more sweep job ids")]) -> None:
    """A sweep's trials: config, status, accuracies, the best trial; the union grid of a 2-D grid."""
    client = ServiceClient()
    for jid in job_ids:
        job = client.get(f"/v1/jobs/{jid}")
        if job["kind"] != "sweep":
            fail(f"job {jid} is a {job['kind']} job, not a sweep (see `rampctl results {jid}`)", USAGE_ERROR)
        print_sweep(client, job)
        if job["status"] in TERMINAL and job["status"] != "succeeded":
            error = f": {job['error']}" if job.get("error") else ""
            err_console.print(f"sweep {jid} {job['status']}{error}", highlight=False)


def register(app: typer.Typer, names: Sequence[str] = ("sweep", "trials")) -> None:
    for name, fn in (("sweep", sweep), ("trials", trials)):
        if name in names:
            app.command(name)(fn)
