"""The service commands: ``rampctl serve | submit | jobs | status | cancel | retry | results | logs``,
``rampctl token create`` and ``rampctl db upgrade``.

The client commands talk to the REST API at RAMP_URL (default http://127.0.0.1:8000) with the
bearer token RAMP_TOKEN, or else the embedded service's admin token file ($RAMP_HOME/admin_token).
``serve``, ``token`` and ``db`` act on the local settings (DATABASE_URL, RAMP_*). Every failure
prints one ``error:`` line (no traceback) and exits non-zero. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from rampctl.science import USAGE_ERROR, console, err_console, fail, parse_pairs
from rampctl.tables import format_fraction, print_results_table
from workers.contract.status import TERMINAL as JOB_TERMINAL

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset(str(s) for s in JOB_TERMINAL)


# ------------------------------------------------------------------------------------ the client


class ServiceClient:
    """A thin REST client whose errors are one-line messages."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.url = (url or os.environ.get("RAMP_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("RAMP_TOKEN") or _admin_token_from_file()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            fail(f"cannot reach the service at {self.url} ({type(e).__name__}); is `rampctl serve` running?")
        if r.status_code >= 400:
            fail(_http_error(r))
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def stream_events(self, job_id: int, after: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, payload) from the job's server-sent events, resuming after a dropped link."""
        last_id = after
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", params={"follow": "true"},
                                      headers=headers, timeout=httpx.Timeout(30.0, read=None)) as r:
                    if r.status_code >= 400:
                        r.read()
                        fail(_http_error(r))
                    for etype, eid, data in _sse_frames(r.iter_lines()):
                        failures = 0
                        if eid is not None:
                            last_id = eid
                        yield etype, data
                        if etype == "end":
                            return
            except httpx.TransportError as e:
                failures += 1
                if failures > 30:
                    fail(f"lost the event stream from {self.url}: {type(e).__name__}")
                time.sleep(min(5.0, 0.5 * failures))  # the service may be restarting


def _admin_token_from_file() -> str | None:
    home = Path(os.environ.get("RAMP_HOME") or Path.home() / ".ramp").expanduser()
    path = Path(os.environ.get("RAMP_ADMIN_TOKEN_FILE") or home / "admin_token").expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _http_error(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:300]}"
    detail = body.get("detail") if isinstance(body, dict) else body
    if r.status_code == 401:
        detail = f"{detail} (set RAMP_TOKEN, or create one with `rampctl token create NAME`)"
    return f"HTTP {r.status_code}: {detail}"


def _sse_frames(lines: Iterator[str]) -> Iterator[tuple[str, int | None, dict[str, Any]]]:
    etype, eid, data = "message", None, []
    for line in lines:
        if not line:
            if data:
                yield etype, eid, json.loads("\n".join(data))
            etype, eid, data = "message", None, []
        elif line.startswith(":"):
            continue  # keep-alive comment
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                etype = value
            elif field == "id" and value.isdigit():
                eid = int(value)
            elif field == "data":
                data.append(value)


# ------------------------------------------------------------------------------- building specs


def build_spec(
    spec_file: Path | None, *, kind: str | None, flags: dict[str, Any], eps: list[str], params: list[str]
) -> dict[str, Any]:
    """A job spec from an optional JSON file (``-`` = stdin) overridden by the given flags."""
    spec: dict[str, Any] = {}
    if spec_file is not None:
        try:
            text = sys.stdin.read() if str(spec_file) == "-" else spec_file.read_text()
            spec = json.loads(text)
        except OSError as e:
            fail(f"cannot read {spec_file}: {e.strerror}", USAGE_ERROR)
        except ValueError as e:
            fail(f"{spec_file} is not valid JSON: {e}", USAGE_ERROR)
        if not isinstance(spec, dict):
            fail(f"{spec_file} must hold a JSON object (a job spec)", USAGE_ERROR)
    if kind is not None:
        spec["kind"] = kind
    spec.setdefault("kind", "train")
    spec.update({k: v for k, v in flags.items() if v is not None})
    if eps:
        spec["epsilons"] = dict(spec.get("epsilons") or {}) | parse_pairs(eps, "--eps", float)
    if params:
        spec["params"] = dict(spec.get("params") or {}) | parse_pairs(params, "--param")
    return spec


# ------------------------------------------------------------------------------------ printing


def _percent(job: dict[str, Any]) -> str:
    if job["status"] == "succeeded":
        return "100%"
    fraction = (job.get("progress") or {}).get("fraction")
    return f"{100 * fraction:.0f}%" if isinstance(fraction, int | float) else "-"


def print_job(job: dict[str, Any]) -> None:
    spec = job["spec"]
    what = " ".join(str(spec[k]) for k in ("method", "dataset", "model") if spec.get(k))
    console.print(f"[bold]job {job['id']}[/] {job['kind']} {what}: [bold]{job['status']}[/]"
                  f" (attempt {job['attempt']}/{job['max_retries'] + 1}, progress {_percent(job)})",
                  highlight=False)
    if job.get("status_reason"):
        console.print(f"  reason: {job['status_reason']}", highlight=False)
    if job.get("error"):
        console.print(f"  [red]error:[/] {job['error']}", highlight=False)
    if job.get("ray_dashboard_url"):
        console.print(f"  ray: {job['ray_dashboard_url']}", highlight=False)
    if job.get("metrics"):
        print_results_table([{"name": f"#{job['id']}", **job["metrics"]}])


def _follow(client: ServiceClient, job_id: int) -> dict[str, Any]:
    """A live progress bar fed by the job's event stream; returns the final job."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task: TaskID = bar.add_task(f"job {job_id}", total=1.0)
        for etype, ev in client.stream_events(job_id):
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
                bar.console.print(f"  epoch {data.get('epoch')}/{data.get('epochs')}: {losses} {monitor}",
                                  highlight=False)
            elif etype == "log" and data.get("level") in ("warning", "error"):
                bar.console.print(f"  [{data['level']}] {data.get('message', '')}", highlight=False)
            elif etype == "status":
                bar.console.print(f"  {data.get('from')} -> {data.get('to')}"
                                  + (f" ({data['reason']})" if data.get("reason") else ""), highlight=False)
    return client.get(f"/v1/jobs/{job_id}")


def _exit_for(job: dict[str, Any]) -> None:
    if job["status"] != "succeeded":
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
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                timeout_graceful_shutdown=30)


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
    suite: Annotated[str | None, typer.Option(help="eval: standard (default) | monitor (upper bound) | "
                                                   "autoattack")] = None,
    n: Annotated[int | None, typer.Option(help="eval: number of test points")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="a resubmit returns the same job")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="then follow the job to its end")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the job id")] = False,
) -> None:
    """Submit a job (a spec file, flags, or both: flags override the file)."""
    flags = {"method": method, "dataset": dataset, "model": model, "epochs": epochs, "max_steps": max_steps,
             "batch_size": batch_size, "seed": seed, "train_n": train_n, "eval_n": eval_n,
             "checks_n": checks_n, "monitor_n": monitor_n, "max_retries": max_retries,
             "checkpoint": checkpoint, "job_id": job_id, "suite": suite, "n": n}
    if init_from_job is not None and init_from_checkpoint is not None:
        fail("give --init-from-job or --init-from-checkpoint, not both", USAGE_ERROR)
    if init_from_job is not None:
        flags["init_from"] = {"job_id": init_from_job}
    elif init_from_checkpoint is not None:
        flags["init_from"] = {"checkpoint": init_from_checkpoint}
    spec = build_spec(spec_file, kind=kind, flags=flags, eps=eps or [], params=param or [])
    client = ServiceClient()
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job = client.post("/v1/jobs", json=spec, headers=headers)
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
    page = ServiceClient().get("/v1/jobs", params=params)
    table = Table(title=None)
    for col in ("id", "kind", "method", "dataset", "status", "attempt", "progress", "union", "created"):
        table.add_column(col, justify="right" if col in ("id", "attempt", "progress", "union") else "left")
    for j in page["jobs"]:
        spec = j["spec"]
        union = format_fraction((j.get("metrics") or {}).get("union"))
        created = j["created_at"][:19].replace("T", " ")
        table.add_row(str(j["id"]), j["kind"], spec.get("method") or "-", spec.get("dataset") or "-",
                      j["status"], str(j["attempt"]), _percent(j), union, created)
    console.print(table)
    if page.get("next_cursor"):
        console.print(f"(more: --limit {min(200, limit * 2)})", highlight=False)


def status(
    job_id: Annotated[int, typer.Argument(help="job id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="live progress until the job ends")] = False,
) -> None:
    """Show a job; with --follow, a live progress bar until it ends."""
    client = ServiceClient()
    job = _follow(client, job_id) if follow else client.get(f"/v1/jobs/{job_id}")
    print_job(job)
    if follow:
        _exit_for(job)


def cancel(job_id: Annotated[int, typer.Argument(help="job id")]) -> None:
    """Cancel a job (queued: at once; running: Ray stops it)."""
    job = ServiceClient().post(f"/v1/jobs/{job_id}/cancel")
    console.print(f"job {job_id}: {job['status']}", highlight=False)


def retry(job_id: Annotated[int, typer.Argument(help="job id")]) -> None:
    """Queue a failed or cancelled job again (a new attempt; training resumes from its checkpoint)."""
    job = ServiceClient().post(f"/v1/jobs/{job_id}/retry")
    console.print(f"job {job_id}: {job['status']} (attempt {job['attempt']})", highlight=False)


def results(job_ids: Annotated[list[int], typer.Argument(help="one or more job ids")]) -> None:
    """Clean / l_inf / l_2 / l_1 / union accuracy of jobs, side by side."""
    client = ServiceClient()
    rows, unfinished = [], []
    for jid in job_ids:
        job = client.get(f"/v1/jobs/{jid}")
        if job["kind"] == "sweep":
            from rampctl.sweep_cmds import print_sweep  # lazy: sweep_cmds imports this module

            print_sweep(client, job)  # the trial table and, for a 2-D grid, the union grid
        spec = job["spec"]
        name = f"#{jid} " + (spec.get("method") or spec.get("base", {}).get("method") or job["kind"])
        if job.get("metrics"):
            rows.append({"name": name, **job["metrics"]})
        else:
            unfinished.append(f"#{jid} is {job['status']}")
            rows.append({"name": f"{name} ({job['status']})"})
    print_results_table(rows, title="results")
    if unfinished:
        err_console.print("no metrics yet: " + ", ".join(unfinished), highlight=False)


def logs(job_id: Annotated[int, typer.Argument(help="job id")]) -> None:
    """The job driver's output, as Ray captured it."""
    sys.stdout.write(ServiceClient().get(f"/v1/jobs/{job_id}/logs"))


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


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="who the token is for")],
    admin: Annotated[bool, typer.Option("--admin", help="an admin token")] = False,
) -> None:
    """Create an API token; the token alone is printed on the last line (it is not stored)."""
    from service import repository
    from service.core.security import generate_token
    from service.db import migrate
    from service.db.session import make_engine, make_session_factory

    settings = _local_settings()
    token = generate_token()
    with _db_errors():
        migrate.upgrade(str(settings.database_url))
        engine = make_engine(str(settings.database_url))
        try:
            with make_session_factory(engine)() as session:
                row = repository.create_api_token(session, name, token, is_admin=admin)
        finally:
            engine.dispose()
    err_console.print(f"created token {name!r} (id {row.id}); it is shown only once:", highlight=False)
    print(token)


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
    for name, fn in (("serve", serve), ("submit", submit), ("jobs", jobs), ("status", status),
                     ("cancel", cancel), ("retry", retry), ("results", results), ("logs", logs)):
        app.command(name)(fn)
    app.add_typer(token_app, name="token")
    app.add_typer(db_app, name="db")
