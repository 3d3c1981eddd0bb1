"""``rampctl``: the command-line entry point (console script ``rampctl = rampctl.main:app``)."""

from __future__ import annotations

import typer

from rampctl import science, service_cmds

app = typer.Typer(
    name="rampctl",
    help="Train and evaluate classifiers robust to several lp threat models at once (RAMP and baselines).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Science commands: run locally, no service needed.
science.register(app)

# ---- Service commands ------------------------------------------------------------------------
# The service client commands (serve, submit, jobs, results, cancel, ...) are registered here by
# the service's CLI module, in the same way:
#     from rampctl import service_cmds
#     service_cmds.register(app)
# -----------------------------------------------------------------------------------------------
service_cmds.register(app)


if __name__ == "__main__":
    app()
