"""The service commands: ``rampctl serve | submit | jobs | status | cancel | retry | results | logs``,
``rampctl token create | list | revoke`` and ``rampctl db upgrade``.

The client commands talk to the REST API through ``rampctl.client`` (settings: ``rampctl.settings``,
RAMP_URL / RAMP_TOKEN / the embedded admin token file) and print through ``rampctl.console``.
``serve``, ``token`` and ``db`` act on the local service settings (DATABASE_URL, RAMP_*). Every
failure prints one ``error:`` line (no traceback) and exits non-zero. Nothing here imports torch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from rampctl.client import ServiceClient, ServiceError
from rampctl.console import (
    USAGE_ERROR,
    console,
    err_console,
    fail,
    follow_job,
    one_line_errors,
    print_job,
    print_jobs,
    print_results_table,
    print_sweep,
    print_tokens,
)
from rampctl.options import parse_pairs, read_spec_file
from rampctl.tables import pair_lines
from workers.contract.status import JobStatus


def build_spec(
    spec_file: Path | None, *, kind: str | None, flags: dict[str, Any], eps: list[str], params: list[str]
) -> dict[str, Any]:
    """A job spec from an optional JSON file (``-`` = stdin) overridden by the given flags."""
    spec = read_spec_file(spec_file, "a job spec") if spec_file is not None else {}
    if kind is not None:
        spec["kind"] = kind
    spec.setdefault("kind", "train")
    spec.update({k: v for k, v in flags.items() if v is not None})
    if eps:
        spec["epsilons"] = dict(spec.get("epsilons") or {}) | parse_pairs(eps, "--eps", float)
    if params:
        spec["params"] = dict(spec.get("params") or {}) | parse_pairs(params, "--param")
    return spec


def _follow(client: ServiceClient, job_id: int) -> dict[str, Any]:
    """Follow the job live to its end; the final job."""
    follow_job(job_id, client.follow(job_id))
    return client.job(job_id)


def _exit_for(job: dict[str, Any]) -> None:
    if job["status"] != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------ commands


def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default RAMP_HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default RAMP_PORT or 8000)")] = None,
) -> None:
    """Run the service: API + dispatcher (+ an embedded Ray head and SQLite unless configured)."""
    import uvicorn

    from service.core.config import Settings
    from service.main import create_app

    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        settings = Settings(**overrides)
    except ValueError as e:
        fail(f"invalid settings: {e}", USAGE_ERROR)
    # proxy_headers=False: which proxies to believe is the app's setting (RAMP_TRUSTED_PROXIES), not
    # uvicorn's default of trusting 127.0.0.1.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                timeout_graceful_shutdown=30, proxy_headers=False)


def submit(
    spec_file: Annotated[Path | None, typer.Argument(help="job spec JSON file ('-' = stdin)")] = None,
    kind: Annotated[str | None, typer.Option(help="train | finetune | eval")] = None,
    method: Annotated[str | None, typer.Option()] = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    max_steps: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    train_n: Annotated[int | None, typer.Option(help="use only the first N training points")] = None,
    eval_n: Annotated[int | None, typer.Option(help="points in the final evaluation")] = None,
    checks_n: Annotated[int | None, typer.Option(help="points the evaluation-rigour checks run on "
                                                      "(train: of the final evaluation; 0: none)")] = None,
    monitor_n: Annotated[int | None, typer.Option(help="held-out points checked per epoch (the monitor "
                                                       "suite: an upper bound)")] = None,
    eps: Annotated[list[str] | None, typer.Option("--eps", help="radius NORM=VALUE (repeat)")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="KEY=VALUE, e.g. ramp.lambda=5")] = None,
    max_retries: Annotated[int | None, typer.Option()] = None,
    checkpoint: Annotated[str | None, typer.Option(help="eval: checkpoint path")] = None,
    job_id: Annotated[int | None, typer.Option("--job-id", help="eval: the job whose checkpoint")] = None,
    init_from_job: Annotated[int | None, typer.Option(help="finetune: from this job's checkpoint")] = None,
    init_from_checkpoint: Annotated[str | None, typer.Option(help="finetune: start from this path")] = None,
    suite: Annotated[str | None, typer.Option(help="eval: standard (default) | standard+ | monitor (upper "
                                                   "bound) | autoattack")] = None,
    n: Annotated[int | None, typer.Option(help="eval: number of test points")] = None,
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last", help="channels-last memory layout (train: the run; eval: the evaluation): "
                                "faster on CPU, the same model")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="a resubmit returns the same job")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="then follow the job to its end")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the job id")] = False,
) -> None:
    """Submit a job (a spec file, flags, or both: flags override the file)."""
    flags = {"method": method, "dataset": dataset, "model": model, "epochs": epochs, "max_steps": max_steps,
             "batch_size": batch_size, "seed": seed, "train_n": train_n, "eval_n": eval_n,
             "checks_n": checks_n, "monitor_n": monitor_n, "max_retries": max_retries,
             "checkpoint": checkpoint, "job_id": job_id, "suite": suite, "n": n,
             "channels_last": channels_last}
    if init_from_job is not None and init_from_checkpoint is not None:
        fail("give --init-from-job or --init-from-checkpoint, not both", USAGE_ERROR)
    if init_from_job is not None:
        flags["init_from"] = {"job_id": init_from_job}
    elif init_from_checkpoint is not None:
        flags["init_from"] = {"checkpoint": init_from_checkpoint}
    spec = build_spec(spec_file, kind=kind, flags=flags, eps=eps or [], params=param or [])
    with ServiceClient() as client:
        job = client.submit(spec, idempotency_key)
        if quiet:
            print(job["id"])
        else:
            console.print(f"submitted job {job['id']} ({job['kind']}, {job['status']})", highlight=False)
        if follow:
            final = _follow(client, job["id"])
            if not quiet:
                print_job(final)
            _exit_for(final)


def jobs(
    status: Annotated[list[str] | None, typer.Option("--status", help="filter (repeat)")] = None,
    kind: Annotated[str | None, typer.Option()] = None,
    method: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
) -> None:
    """List jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    for key, value in (("status", status), ("kind", kind), ("method", method)):
        if value:
            params[key] = value
    with ServiceClient() as client:
        print_jobs(client.jobs(params), limit)


def status(
    job_id: Annotated[int, typer.Argument(help="job id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="live progress until the job ends")] = False,
) -> None:
    """Show a job; with --follow, a live progress bar until it ends."""
    with ServiceClient() as client:
        job = _follow(client, job_id) if follow else client.job(job_id)
    print_job(job)
    if follow:
        _exit_for(job)


def cancel(job_id: Annotated[int, typer.Argument(help="job id")]) -> None:
    """Cancel a job (queued: at once; running: Ray stops it)."""
    with ServiceClient() as client:
        job = client.cancel(job_id)
    console.print(f"job {job_id}: {job['status']}", highlight=False)


def retry(job_id: Annotated[int, typer.Argument(help="job id")]) -> None:
    """Queue a failed or cancelled job again (a new attempt; training resumes from its checkpoint)."""
    with ServiceClient() as client:
        job = client.retry(job_id)
    console.print(f"job {job_id}: {job['status']} (attempt {job['attempt']})", highlight=False)


def results(job_ids: Annotated[list[int], typer.Argument(help="one or more job ids")]) -> None:
    """Clean / l_inf / l_2 / l_1 / union accuracy of jobs with their 95 % intervals, side by side; for
    jobs evaluated on the same points, the paired differences with exact McNemar p values."""
    rows, unfinished = [], []
    with ServiceClient() as client:
        for jid in job_ids:
            job = client.job(jid)
            if job["kind"] == "sweep":
                print_sweep(job, client.trials(jid))  # the trial table and, for a 2-D grid, the union grid
            spec = job["spec"]
            name = f"#{jid} " + (spec.get("method") or spec.get("base", {}).get("method") or job["kind"])
            if job.get("metrics"):
                rows.append({"name": name, **job["metrics"]})
            else:
                unfinished.append(f"#{jid} is {job['status']}")
                rows.append({"name": f"{name} ({job['status']})"})
    print_results_table(rows, title="results")
    finished = [jid for jid, row in zip(job_ids, rows, strict=True) if len(row) > 1]
    if len(finished) > 1:
        with ServiceClient() as client:
            report = client.compare(finished)
        for line in pair_lines(report):
            console.print(line, highlight=False)
    if unfinished:
        err_console.print("no metrics yet: " + ", ".join(unfinished), highlight=False)


def logs(job_id: Annotated[int, typer.Argument(help="job id")]) -> None:
    """The job driver's output, as Ray captured it."""
    with ServiceClient() as client:
        sys.stdout.write(client.logs(job_id))


# ----------------------------------------------------------------------------- local admin


token_app = typer.Typer(help="API tokens (acts on the local database: DATABASE_URL).", no_args_is_help=True)
db_app = typer.Typer(help="The service database (DATABASE_URL).", no_args_is_help=True)


def _local_settings() -> Any:
    from service.core.config import Settings

    try:
        return Settings()
    except ValueError as e:
        fail(f"invalid settings: {e}", USAGE_ERROR)


@contextmanager
def _db_errors() -> Iterator[None]:
    """Connection failures, a missing driver, a bad URL: one line, no traceback."""
    try:
        yield
    except Exception as e:
        text = str(getattr(e, "orig", None) or e).strip() or type(e).__name__
        fail(f"database error ({type(e).__name__}): {text.splitlines()[0]}")


# The longest --expires-in accepted: later dates overflow datetime, and nobody means them.
MAX_EXPIRES_DAYS = 36_500


@contextmanager
def _local_session() -> Iterator[Any]:
    """A session on the local service database (DATABASE_URL), migrated to the current schema."""
    from service.db import migrate
    from service.db.session import make_engine, make_session_factory

    settings = _local_settings()
    with _db_errors():
        migrate.upgrade(str(settings.database_url))
        engine = make_engine(str(settings.database_url))
        try:
            with make_session_factory(engine)() as session:
                yield session
        finally:
            engine.dispose()


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="who the token is for: the owner of the jobs it submits")],
    admin: Annotated[bool, typer.Option("--admin", help="an admin token (sees every owner's jobs)")] = False,
    expires_in: Annotated[float | None, typer.Option("--expires-in", metavar="DAYS",
                                                     help="expire after DAYS days (default: never)")] = None,
    existing_owner: Annotated[bool, typer.Option(
        "--existing-owner",
        help="NAME is an existing owner: give it one more token (which reads and acts on all its jobs)",
    )] = False,
) -> None:
    """Create an API token for a new owner NAME (or, with --existing-owner, one more token of an
    existing owner); the token alone is printed on the last line (it is not stored)."""
    from datetime import timedelta

    from service.auth import principals, tokens
    from service.core.security import generate_token
    from service.db.base import utcnow

    if not name.strip() or len(name) > 128:
        fail("NAME must be 1-128 characters, not blank", USAGE_ERROR)
    expires_at = None
    if expires_in is not None:
        if not 0 < expires_in <= MAX_EXPIRES_DAYS:  # also refuses NaN
            fail(f"--expires-in must be a number of days > 0 and <= {MAX_EXPIRES_DAYS}, got {expires_in:g}",
                 USAGE_ERROR)
        expires_at = utcnow() + timedelta(days=expires_in)
    token = generate_token()
    refused: str | None = None
    with _local_session() as session:
        try:
            row = tokens.create_api_token(session, name, token, is_admin=admin, expires_at=expires_at,
                                          existing_owner=existing_owner)
            owner_id, shared = row.principal_id, principals.token_count(session, row.principal_id or 0)
        except (principals.OwnerExists, principals.NoSuchOwner) as e:
            refused = str(e)  # said outside the session: its error handler would call it a database error
    if refused is not None:
        fail(refused, USAGE_ERROR)
    until = f", expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at is not None else ""
    of = f"owner {name!r} (#{owner_id})" + (f", its token {shared} of {shared}" if shared > 1 else "")
    err_console.print(f"created token id {row.id} for {of}{until}; it is shown only once:", highlight=False)
    print(token)


@token_app.command("list")
def token_list() -> None:
    """List the API tokens: owner (name and id; how many tokens it has), admin, created, expires,
    last used, revoked (never the secret)."""
    from collections import Counter

    from service.auth import principals, tokens
    from service.db.base import utcnow

    with _local_session() as session:
        found = tokens.list_api_tokens(session)
        owners = principals.names(session, {t.principal_id for t in found if t.principal_id is not None})
    per_owner = Counter(t.principal_id for t in found)
    rows = [
        {"id": t.id, "name": owners.get(t.principal_id or 0, t.name), "owner_id": t.principal_id,
         "owner_tokens": per_owner[t.principal_id], "is_admin": t.is_admin, "created_at": t.created_at,
         "expires_at": t.expires_at, "last_used_at": t.last_used_at, "revoked_at": t.revoked_at}
        for t in found
    ]
    print_tokens(rows, utcnow())


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="revoke every active token of this owner")],
) -> None:
    """Revoke every active token of the owner NAME (at once: their next request is a 401, their
    open event streams and page sessions end)."""
    from service.auth import principals, tokens

    with _local_session() as session:
        revoked = tokens.revoke_api_tokens_named(session, name)
        known = revoked > 0 or principals.find(session, name) is not None
    if not revoked:
        fail(f"no active token named {name!r}" if known else f"no token named {name!r} "
             "(see `rampctl token list`)")
    console.print(f"revoked {revoked} token{'s' if revoked != 1 else ''} named {name!r}", highlight=False)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply the migrations (the service also does it at start-up)."""
    from sqlalchemy.engine import make_url

    from service.db import migrate

    settings = _local_settings()
    with _db_errors():
        migrate.upgrade(str(settings.database_url), revision)
    shown = make_url(str(settings.database_url)).render_as_string(hide_password=True)
    console.print(f"database {shown} upgraded to {revision}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    for name, fn in (("submit", submit), ("jobs", jobs), ("status", status), ("cancel", cancel),
                     ("retry", retry), ("results", results), ("logs", logs)):
        app.command(name)(one_line_errors(ServiceError)(fn))
    app.add_typer(token_app, name="token")
    app.add_typer(db_app, name="db")
