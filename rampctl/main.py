"""``rampctl``: the command-line entry point (console script ``rampctl = rampctl.main:app``)."""

from __future__ import annotations

import typer

from rampctl import science, service_cmds, sweep_cmds

app = typer.Typer(
    name="rampctl",
    help="Train and evaluate classifiers robust to several lp threat models at once (RAMP and baselines).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Science commands: run locally, no service needed.
science.register(app)

# ---- Service and sweep commands (serve, submit, jobs, status, results, cancel, sweep, ...) ------
service_cmds.register(app)
sweep_cmds.register(app)

if __name__ == "__main__":
    app()
