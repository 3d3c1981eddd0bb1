"""Sweep commands: ``rampctl sweep SPEC`` (submit, optionally follow) and ``rampctl trials ID``.

Both print a sweep as ``rampctl results ID`` does (``rampctl.console.print_sweep``): the trial
table (config columns, status, clean / per-norm / union, the best trial starred) and, for a sweep
over exactly two grid keys, the union-accuracy grid. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from rampctl.client import ServiceClient, ServiceError
from rampctl.console import (
    USAGE_ERROR,
    console,
    err_console,
    fail,
    follow_sweep,
    one_line_errors,
    print_sweep,
)
from rampctl.options import read_spec_file
from workers.contract.status import TERMINAL, JobStatus


def _read_spec(path: Path) -> dict[str, Any]:
    spec = read_spec_file(path, "a sweep spec", yaml_suffixes=True)
    if spec.setdefault("kind", "sweep") != "sweep":
        fail(f"{path} is a {spec['kind']!r} spec; `rampctl sweep` submits sweeps (use `rampctl submit`)",
             USAGE_ERROR)
    return spec


def sweep(
    spec_file: Annotated[Path, typer.Argument(help="sweep spec, JSON or YAML ('-' = JSON on stdin)")],
    idempotency_key: Annotated[str | None, typer.Option(help="a resubmit returns the same sweep")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="follow the trials, then print them")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the job id")] = False,
) -> None:
    """Submit a sweep: a base train/finetune spec, a param_space, the metric to optimise."""
    spec = _read_spec(spec_file)
    with ServiceClient() as client:
        job = client.submit(spec, idempotency_key)
        if quiet:
            print(job["id"])
        else:
            n = job["spec"].get("num_trials")
            console.print(f"submitted sweep {job['id']} ({n} trials, {job['status']})", highlight=False)
        if follow:
            follow_sweep(client.follow(job["id"]))
            final = client.job(job["id"])
            if not quiet:
                print_sweep(final, client.trials(final["id"]))
            if final["status"] != JobStatus.SUCCEEDED:
                if final.get("error"):
                    err_console.print(f"sweep {final['id']} {final['status']}: {final['error']}",
                                      highlight=False)
                raise typer.Exit(1)


def trials(job_ids: Annotated[list[int], typer.Argument(help="one or more sweep job ids")]) -> None:
    """A sweep's trials: config, status, accuracies, the best trial; the union grid of a 2-D grid."""
    with ServiceClient() as client:
        for jid in job_ids:
            job = client.job(jid)
            if job["kind"] != "sweep":
                fail(f"job {jid} is a {job['kind']} job, not a sweep (see `rampctl results {jid}`)",
                     USAGE_ERROR)
            print_sweep(job, client.trials(jid))
            if job["status"] in TERMINAL and job["status"] != JobStatus.SUCCEEDED:
                error = f": {job['error']}" if job.get("error") else ""
                err_console.print(f"sweep {jid} {job['status']}{error}", highlight=False)


def register(app: typer.Typer, names: Sequence[str] = ("sweep", "trials")) -> None:
    for name, fn in (("sweep", sweep), ("trials", trials)):
        if name in names:
            app.command(name)(one_line_errors(ServiceError)(fn))
