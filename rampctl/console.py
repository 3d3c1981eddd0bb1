"""Everything the CLI prints: error lines, progress bars, jobs, trials and result tables.

Commands parse their options, call ``rampctl.client`` and hand what comes back to a function here.
Tables are built in ``rampctl.tables``; this module writes them. A failure is one ``error:`` line
on stderr and a non-zero exit (2: invalid arguments, 1: a failure while running), never a
traceback. Nothing here imports torch or talks to the service.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rampctl.tables import (
    format_fraction,
    gradient_text,
    grouped_check_lines,
    job_progress,
    jobs_table,
    results_table,
    tokens_table,
    trials_table,
    union_grid,
    unseen_table,
)
from workers.training.callbacks import Callback, EpochReport, TrainInfo  # torch-free

console = Console()
err_console = Console(stderr=True)

USAGE_ERROR = 2
RUN_ERROR = 1

P = ParamSpec("P")
R = TypeVar("R")
# A followed job's events: (type, payload) pairs, as ``ServiceClient.follow`` yields them.
Events = Iterable[tuple[str, Mapping[str, Any]]]


# ------------------------------------------------------------------------------------ failures


def fail(message: str, code: int = RUN_ERROR) -> NoReturn:
    one_line = " ".join(message.split())  # torch's messages span lines; a CLI error is one line
    err_console.print(f"[bold red]error:[/] {escape(one_line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def one_line_errors(*errors: type[Exception]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Wrap a command so that the given errors (e.g. the client's ``ServiceError``) print as one
    ``error:`` line and exit 1. ``functools.wraps`` keeps the signature typer reads the options from."""

    def wrap(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return command(*args, **kwargs)
            except errors as e:
                fail(str(e))

        return run

    return wrap


# ------------------------------------------------------------------------------------- results


def print_results_table(rows: Sequence[Mapping[str, Any]], *, title: str | None = None) -> None:
    """The results table, then each row's rigour-check verdict or warnings under it."""
    console.print(results_table(rows, title=title))
    unseen = unseen_table(rows)
    if unseen is not None:
        console.print(unseen)
    for who, line in grouped_check_lines(rows):
        style = "yellow" if line.startswith("warning") or " failed " in f" {line} " else None
        console.print(f"{who}: {line}", style=style, highlight=False)


# ---------------------------------------------------------------------------------- local runs


class RichProgress(Callback):
    """A progress bar over optimiser steps, one summary line per epoch, then the final evaluation's bar."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self.task: TaskID | None = None
        self.eval_task: TaskID | None = None

    def on_train_start(self, info: TrainInfo) -> None:
        if info.start_epoch:
            console.print(f"resuming after epoch {info.start_epoch} (step {info.start_step})")
        self.progress.start()
        self.task = self.progress.add_task("train", total=info.total_steps, completed=info.start_step)

    def on_step(self, step: int, total_steps: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=step)

    def on_epoch_end(self, report: EpochReport) -> None:
        parts = [f"epoch {report.epoch}/{report.epochs}", f"lr {report.lr:.4g}"]
        parts += [f"{k} {v:.4f}" for k, v in report.losses.items()]
        parts += [f"train-{k} {format_fraction(v)}" for k, v in report.train_robust_acc.items()]
        if report.grad_cosine is not None:
            parts.append(gradient_text(report.grad_cosine, report.grad_angle_deg))
        if report.monitor:
            parts.append("monitor (upper bound): " + " ".join(
                f"{k} {format_fraction(v)}" for k, v in report.monitor.items()))
        parts.append(f"{report.seconds:.1f}s")
        self.progress.console.print("  ".join(parts), highlight=False)

    def on_eval_progress(self, done: int, total: int) -> None:
        if self.eval_task is None:
            if self.task is not None:
                self.progress.update(self.task, visible=False)
            self.eval_task = self.progress.add_task("evaluate", total=total)
        self.progress.update(self.eval_task, completed=done, total=total)

    def on_train_end(self, metrics: dict[str, Any]) -> None:
        self.stop()

    def stop(self) -> None:
        if self.progress.live.is_started:  # stopping a bar that never started prints a blank line
            self.progress.stop()


@contextmanager
def eval_progress() -> Iterator[Callable[[int, int], None]]:
    """A transient bar over evaluated points; yields the ``progress(done, total)`` callback."""
    bar = Progress(TextColumn("[bold]eval"), BarColumn(), TimeRemainingColumn(), console=console,
                   transient=True)
    task = bar.add_task("eval", total=None)

    def advance(done: int, total: int) -> None:
        if not bar.live.is_started:  # started on the first tick: failures before any work print no bar
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield advance
    finally:
        if bar.live.is_started:
            bar.stop()


# ---------------------------------------------------------------------------------------- jobs


def print_job(job: Mapping[str, Any]) -> None:
    spec = job["spec"]
    what = " ".join(str(spec[k]) for k in ("method", "dataset", "model") if spec.get(k))
    console.print(f"[bold]job {job['id']}[/] {job['kind']} {what}: [bold]{job['status']}[/]"
                  f" (attempt {job['attempt']}/{job['max_retries'] + 1}, progress {job_progress(job)})",
                  highlight=False)
    if job.get("status_reason"):
        console.print(f"  reason: {job['status_reason']}", highlight=False)
    if job.get("error"):
        console.print(f"  [red]error:[/] {job['error']}", highlight=False)
    if job.get("ray_dashboard_url"):
        console.print(f"  ray: {job['ray_dashboard_url']}", highlight=False)
    if job.get("metrics"):
        print_results_table([{"name": f"#{job['id']}", **job["metrics"]}])


def print_jobs(page: Mapping[str, Any], limit: int) -> None:
    """A page of the job list, and how to see more when there is more."""
    console.print(jobs_table(page["jobs"]))
    if page.get("next_cursor"):
        console.print(f"(more: --limit {min(200, limit * 2)})", highlight=False)


def print_tokens(tokens: Sequence[Mapping[str, Any]], now: datetime) -> None:
    """``rampctl token list``: the table, or a hint when there is no token yet."""
    if not tokens:
        console.print("no API tokens (create one with `rampctl token create NAME`)", highlight=False)
        return
    console.print(tokens_table(tokens, now))


def follow_job(job_id: int, events: Events) -> None:
    """A live progress bar fed by a job's events, with its epochs, warnings and status changes."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"job {job_id}", total=1.0)
        for etype, ev in events:
            data = ev.get("data", {})
            if etype == "progress" and data.get("total_steps"):
                phase = data.get("phase", "")
                bar.update(task, completed=float(data.get("fraction") or 0.0),
                           description=f"job {job_id} {phase} {data.get('step')}/{data.get('total_steps')}")
            elif etype == "metrics":
                losses = " ".join(f"{k}={v:.4g}" for k, v in (data.get("losses") or {}).items()
                                  if isinstance(v, int | float))
                monitor = " ".join(f"{k}={format_fraction(v)}"
                                   for k, v in (data.get("monitor") or {}).items())
                if monitor:
                    monitor = f"monitor (upper bound): {monitor}"
                cosine = data.get("grad_cosine")
                if isinstance(cosine, int | float):
                    angle = data.get("grad_angle_deg")
                    losses += " " + gradient_text(cosine, angle if isinstance(angle, int | float) else None)
                bar.console.print(f"  epoch {data.get('epoch')}/{data.get('epochs')}: {losses} {monitor}",
                                  highlight=False)
            elif etype == "log" and data.get("level") in ("warning", "error"):
                bar.console.print(f"  [{data['level']}] {data.get('message', '')}", highlight=False)
            elif etype == "status":
                bar.console.print(f"  {data.get('from')} -> {data.get('to')}"
                                  + (f" ({data['reason']})" if data.get("reason") else ""), highlight=False)


# -------------------------------------------------------------------------------------- sweeps


def follow_sweep(events: Events) -> None:
    """One line per finished trial and per status change of the sweep, until it ends."""
    for etype, ev in events:
        data = ev.get("data", {})
        if etype == "trial" and data.get("event") == "trial_end":
            final = data.get("final") or {}
            union = f" union={format_fraction(final.get('union'))}" if final else ""
            error = f" ({str(data['error'])[-200:]})" if data.get("error") else ""
            console.print(f"  {data.get('trial_id')} {data.get('status')}{union}{error}", highlight=False)
        elif etype == "status":
            console.print(f"  sweep {data.get('from')} -> {data.get('to')}", highlight=False)


def print_sweep(job: Mapping[str, Any], listing: Mapping[str, Any]) -> None:
    """A sweep's trial table, its union grid when it is a 2-D grid, and how to start from the best."""
    spec = job.get("spec") or {}
    done = sum(1 for t in listing.get("trials") or [] if t.get("status") not in ("pending", "running"))
    title = (f"sweep #{job['id']} ({job['status']}): {done}/{len(listing.get('trials') or [])} trials done, "
             f"best by {listing.get('metric')} ({listing.get('mode')})")
    console.print(trials_table(listing, title=title))
    grid = union_grid(listing, spec)
    if grid is not None:
        console.print(grid)
    best = listing.get("best_trial_id")
    if best is not None:
        result = job.get("metrics") or {}
        ckpt = result.get("best_checkpoint") if result.get("best_trial_id") == best else None
        where = f" (checkpoint artifact: {ckpt})" if ckpt else ""
        console.print(f"best: {best}{where}; start from it with "
                      f'"init_from": {{"job_id": {job["id"]}, "trial": "{best}"}}', highlight=False)
