"""The web pages under ``/ui/``: server-rendered (Jinja2) with one small script (``static/ui.js``)
that draws the charts (vendored Chart.js) and keeps active pages live by polling the pages' own
JSON and HTML fragments. Every route authenticates with ``service.ui.auth`` and reads or changes
data only through ``service.ui.data``."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from service.api.body import decode_json
from service.api.deps import SessionDep, SettingsDep, wake_dispatcher
from service.api.ids import parse_id
from service.auth.tokens import authenticate_token
from service.db.models import Job
from service.jobs import commands, store
from service.jobs.specs import SpecError
from service.state import IllegalTransition, JobStatus
from service.sweeps import trials as trial_store
from service.ui import auth, data, sessions, views
from service.ui.unseen import unseen_chart, unseen_compare
from workers.contract.catalog import METHODS

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
KINDS = ("train", "finetune", "eval", "sweep")
LIVE_POLL_MS = 2000
LIST_POLL_MS = 3000
MAX_FORM_BYTES = 256 * 1024
MAX_COMPARE = 12
MAX_LOG_LINES = 500
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SECURITY_HEADERS = {
    # The pages run only their own script and styles; the charts need nothing else.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["pct"] = views.pct
templates.env.filters["fmt"] = views.fmt_value
router = APIRouter(prefix="/ui", include_in_schema=False)


# ---------------------------------------------------------------------------------- plumbing


def page_caller(request: Request, session: SessionDep) -> auth.Caller:
    return auth.require_page_caller(request, session)


def data_caller(request: Request, session: SessionDep) -> auth.Caller:
    return auth.require_data_caller(request, session)


PageCaller = Annotated[auth.Caller, Depends(page_caller)]
DataCaller = Annotated[auth.Caller, Depends(data_caller)]


async def form_fields(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the pages' forms), last value per field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, detail=f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, detail="malformed form body") from None
    return {k: v[-1] for k, v in parsed.items()}


Form = Annotated[dict[str, str], Depends(form_fields)]


def render(request: Request, name: str, caller: auth.Caller | None, status_code: int = 200,
           **context: Any) -> Response:
    context |= {"caller": caller}
    return templates.TemplateResponse(request, name, context, status_code=status_code,
                                      headers=SECURITY_HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def not_found(request: Request, caller: auth.Caller, job_id: int) -> Response:
    return render(request, "error.html", caller, 404, title="Not found", error=f"job {job_id} not found")


def _now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------- login


@router.get("")
@router.get("/")
def home() -> RedirectResponse:
    return redirect(auth.HOME_PATH)


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:  # noqa: A002
    return render(request, "login.html", None, next=auth.safe_next(next))


@router.post("/login")
def login(request: Request, session: SessionDep, settings: SettingsDep, form: Form) -> Response:
    auth.check_login(request)
    token = form.get("token", "").strip()
    target = auth.safe_next(form.get("next"))
    row = authenticate_token(session, token) if token and len(token) <= auth.MAX_TOKEN_CHARS else None
    if row is None:
        return render(request, "login.html", None, 401, next=target, error="invalid or revoked token")
    lifetime = timedelta(hours=settings.ui_session_hours)
    session_id, expires_at = sessions.start(session, row, lifetime=lifetime)
    response = redirect(target)
    auth.set_login_cookie(response, request, session_id, round((expires_at - _now()).total_seconds()))
    return response


@router.post("/logout")
def logout(session: SessionDep, caller: PageCaller, form: Form) -> Response:
    auth.check_csrf(caller, form.get("csrf"))
    if caller.session_id is not None:
        sessions.end(session, caller.session_id)
    response = redirect(auth.LOGIN_PATH)
    auth.clear_login_cookie(response)
    return response


# -------------------------------------------------------------------------------------- jobs


def _statuses(status: list[str] | None) -> list[str]:
    values = [s.strip() for item in status or [] for s in item.split(",") if s.strip()]
    known = {s.value for s in JobStatus}
    bad = [s for s in values if s not in known]
    if bad:
        expected = ", ".join(sorted(known))
        raise HTTPException(422, detail=f"unknown status {bad[0]!r}; expected one of {expected}")
    return values


class JobFilters:
    """The jobs page's query: status (repeat or comma-separate), kind, method, cursor."""

    def __init__(
        self,
        status: Annotated[list[str] | None, Query()] = None,
        kind: str | None = None,
        method: str | None = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> None:
        self.status = _statuses(status)
        self.kind = kind or None
        self.method = method or None
        self.cursor = cursor or None

    def query(self, **extra: Any) -> str:
        params: list[tuple[str, str]] = [("status", s) for s in self.status]
        params += [(k, v) for k, v in (("kind", self.kind), ("method", self.method)) if v]
        params += [(k, str(v)) for k, v in extra.items() if v]
        return urlencode(params)


Filters = Annotated[JobFilters, Depends()]


def _job_rows(session: Any, caller: auth.Caller,
              filters: JobFilters) -> tuple[list[dict[str, Any]], str | None]:
    try:
        jobs, next_cursor = data.visible_jobs(session, caller.token, status=filters.status, kind=filters.kind,
                                              method=filters.method, cursor=filters.cursor)
    except store.InvalidCursor as exc:
        raise HTTPException(400, detail=str(exc)) from None
    now = _now()
    return [views.job_row(j, now) for j in jobs], next_cursor


@router.get("/jobs")
def jobs_page(request: Request, session: SessionDep, caller: PageCaller, filters: Filters) -> Response:
    rows, next_cursor = _job_rows(session, caller, filters)
    return render(
        request, "jobs.html", caller, title="Jobs", rows=rows, filters=filters,
        statuses=[s.value for s in JobStatus], kinds=KINDS, methods=sorted(METHODS),
        next_url=f"/ui/jobs?{filters.query(cursor=next_cursor)}" if next_cursor else None,
        page_data={"page": "jobs", "poll_ms": LIST_POLL_MS,
                   "fragment": f"/ui/fragments/jobs?{filters.query(cursor=filters.cursor)}"},
    )


@router.get("/fragments/jobs")
def jobs_fragment(request: Request, session: SessionDep, caller: DataCaller, filters: Filters) -> Response:
    rows, _ = _job_rows(session, caller, filters)
    return render(request, "_job_rows.html", caller, rows=rows)


# ---------------------------------------------------------------------------------------- job


def _history(session: Any, caller: auth.Caller, job_id: int) -> list[dict[str, Any]]:
    metrics = data.events(session, caller.token, job_id, type="metrics")
    return [{"attempt": ev.attempt, **ev.data} for ev in metrics]


def _live(job: Job, history: list[dict[str, Any]], sweep: dict[str, Any] | None) -> dict[str, Any]:
    """What the job page's script refreshes while the job runs."""
    return {
        "status": job.status, "terminal": views.settled(job), "attempt": job.attempt,
        "progress": views.progress(job), "epochs": views.epoch_series(history),
        "heatmap": sweep["heatmap"] if sweep else None,
    }


def _job_page(request: Request, session: Any, settings: Any, caller: auth.Caller, job_id: int, *,
              error: str | None = None, status_code: int = 200) -> Response:
    try:
        job = data.visible_job(session, caller.token, job_id)
    except store.JobNotFound:
        return not_found(request, caller, job_id)
    history = _history(session, caller, job_id)
    sweep = (views.sweep_view(job, data.sweep_trials(session, caller.token, job_id))
             if job.kind == trial_store.SWEEP_KIND else None)
    result = job.result if isinstance(job.result, dict) else None
    live = _live(job, history, sweep)
    curves = views.radius_curves(result)
    return render(
        request, "job.html", caller, status_code, title=f"Job {job.id}", job=job,
        row=views.job_row(job, _now()), spec_json=json.dumps(job.spec, indent=2, sort_keys=True),
        timeline=views.timeline(job, data.events(session, caller.token, job_id, type="status")),
        logs=[ev.data for ev in data.last_events(session, caller.token, job_id, type="log",
                                                 limit=MAX_LOG_LINES)],
        artifacts=data.artifacts(session, caller.token, settings, job_id),
        results=views.results(result), unseen=unseen_chart(result), curves=curves, epochs=live["epochs"],
        sweep=sweep,
        actions=views.actions(job), error=error, ray_url=data.ray_dashboard_url(job, settings),
        page_data={"page": "job", "job_id": job.id, "kind": job.kind, "poll_ms": LIVE_POLL_MS,
                   "live_url": f"/ui/api/jobs/{job.id}",
                   "log_url": f"/ui/jobs/{job.id}/log" if job.ray_job_id else None,
                   "trials_url": f"/ui/fragments/jobs/{job.id}/trials" if sweep else None,
                   "curves": curves, **live},
    )


@router.get("/jobs/{job_id}")
def job_page(job_id: int, request: Request, session: SessionDep, settings: SettingsDep,
             caller: PageCaller) -> Response:
    return _job_page(request, session, settings, caller, job_id)


@router.get("/api/jobs/{job_id}")
def job_live(job_id: int, session: SessionDep, caller: DataCaller) -> dict[str, Any]:
    job = data.visible_job(session, caller.token, job_id)
    sweep = (views.sweep_view(job, data.sweep_trials(session, caller.token, job_id))
             if job.kind == trial_store.SWEEP_KIND else None)
    return _live(job, _history(session, caller, job_id), sweep)


@router.get("/fragments/jobs/{job_id}/trials")
def trials_fragment(job_id: int, request: Request, session: SessionDep, caller: DataCaller) -> Response:
    job = data.visible_job(session, caller.token, job_id)
    try:
        sweep = views.sweep_view(job, data.sweep_trials(session, caller.token, job_id))
    except trial_store.NotASweep as exc:
        raise HTTPException(404, detail=str(exc)) from None
    return render(request, "_trials.html", caller, job=job, sweep=sweep)


@router.get("/jobs/{job_id}/log", response_class=PlainTextResponse)
def driver_log(job_id: int, request: Request, session: SessionDep, caller: DataCaller) -> PlainTextResponse:
    data.visible_job(session, caller.token, job_id)  # 404 for another owner's job, with or without Ray
    backend = getattr(request.app.state, "backend", None)
    if backend is None:
        return PlainTextResponse("(no Ray backend in this process: the driver log is not available)")
    try:
        text = data.driver_log(session, caller.token, backend, job_id)
    except store.JobNotFound:
        raise
    except Exception as exc:  # Ray unreachable, or the job purged from its history
        detail = f"(could not fetch the driver log from Ray: {type(exc).__name__}: {exc})"
        return PlainTextResponse(detail[:500])
    if text is None:
        return PlainTextResponse("(no Ray job yet)")
    # Ray colours its log lines for a terminal; a page shows the escape codes as noise.
    return PlainTextResponse(ANSI_ESCAPE.sub("", text), headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/artifacts/{name:path}")
def download(job_id: int, name: str, request: Request, session: SessionDep, settings: SettingsDep,
             caller: PageCaller) -> Response:
    try:
        path = data.artifact_path(session, caller.token, settings, job_id, name)
    except store.JobNotFound:  # missing, or another owner's: the same page either way
        return not_found(request, caller, job_id)
    return FileResponse(path, filename=path.name, media_type="application/octet-stream")


def _action(job_id: int, request: Request, session: Any, settings: Any, caller: auth.Caller,
            form: dict[str, str], change: Any) -> Response:
    auth.check_csrf(caller, form.get("csrf"))
    try:
        change(session, caller.token, job_id)
    except store.JobNotFound:  # missing, or another owner's: changes nothing, the same page either way
        return not_found(request, caller, job_id)
    except IllegalTransition as exc:  # e.g. the job finished before the click: say so on its page
        return _job_page(request, session, settings, caller, job_id, error=str(exc), status_code=409)
    wake_dispatcher(request)
    return redirect(f"/ui/jobs/{job_id}")


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: int, request: Request, session: SessionDep, settings: SettingsDep, caller: PageCaller,
           form: Form) -> Response:
    return _action(job_id, request, session, settings, caller, form, data.cancel)


@router.post("/jobs/{job_id}/retry")
def retry(job_id: int, request: Request, session: SessionDep, settings: SettingsDep, caller: PageCaller,
          form: Form) -> Response:
    return _action(job_id, request, session, settings, caller, form, data.retry)


# ------------------------------------------------------------------------------------ compare


def _ids(raw: list[str] | None) -> list[int]:
    out = []
    for item in raw or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            job_id = parse_id(part)
            if job_id is None:
                raise HTTPException(422, detail=f"ids: {part[:40]!r} is not a job id")
            out.append(job_id)
    return out[:MAX_COMPARE]


@router.get("/compare")
def compare_page(request: Request, session: SessionDep, caller: PageCaller,
                 ids: Annotated[list[str] | None, Query()] = None) -> Response:
    jobs, missing = data.jobs_by_id(session, caller.token, _ids(ids))
    histories = {j.id: _history(session, caller, j.id) for j in jobs}
    view = views.compare_view(jobs, histories)
    return render(
        request, "compare.html", caller, title="Compare", view=view, missing=missing,
        unseen=unseen_compare(jobs),
        ids=",".join(str(j.id) for j in jobs),
        page_data={"page": "compare", "curves": view["curves"], "epochs": view["epochs"]},
    )


# ------------------------------------------------------------------------------------- submit


def _prefill(session: Any, caller: auth.Caller, kind: str | None, job_id: int | None,
             trial: str | None) -> dict[str, Any]:
    """A starting spec for the submit form: a fine-tune or an evaluation of a job (or a sweep's
    trial), else a small training job."""
    if job_id is not None and kind in ("finetune", "eval"):
        source = data.visible_job(session, caller.token, job_id)
        ref: dict[str, Any] = {"job_id": source.id} | ({"trial": trial} if trial else {})
        spec = source.spec or {}
        if trial:
            # The trial's own resolved spec: a swept method or dataset differs from the base's.
            spec = data.sweep_trial(session, caller.token, source.id, trial).spec or spec
        if kind == "eval":
            return {"kind": "eval", **ref, "n": 1000}
        base = {k: views.spec_field(spec, k) for k in ("method", "dataset", "model")}
        return {"kind": "finetune", **{k: v for k, v in base.items() if v}, "epochs": 1, "init_from": ref}
    return {"kind": "train", "method": "ramp", "dataset": "mnist-5k", "epochs": 1, "max_steps": 20}


@router.get("/submit")
def submit_page(request: Request, session: SessionDep, caller: PageCaller, kind: str | None = None,
                job_id: Annotated[int | None, Query(ge=1, le=store.MAX_ID)] = None,
                trial: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    try:
        spec = _prefill(session, caller, kind, job_id, trial)
    except store.JobNotFound:
        return not_found(request, caller, job_id or 0)
    except (trial_store.NotASweep, trial_store.TrialNotFound) as exc:
        return render(request, "error.html", caller, 404, title="Not found", error=str(exc))
    return render(request, "submit.html", caller, title="Submit", spec_text=json.dumps(spec, indent=2),
                  idempotency_key=uuid.uuid4().hex)


@router.post("/submit")
def submit(request: Request, session: SessionDep, settings: SettingsDep, caller: PageCaller,
           form: Form) -> Response:
    auth.check_csrf(caller, form.get("csrf"))
    text = form.get("spec", "")
    key = form.get("idempotency_key") or None
    try:
        payload = decode_json(text.encode("utf-8", "surrogatepass"))
        done = data.submit(session, caller.token, settings, payload, idempotency_key=key)
    except HTTPException as exc:  # malformed JSON
        return _submit_form(request, caller, exc.status_code, text, error=str(exc.detail))
    except SpecError as exc:
        return _submit_form(request, caller, 422, text, error=str(exc), field_errors=exc.errors)
    except (commands.BadIdempotencyKey, store.IdempotencyKeyInUse) as exc:  # a hand-edited form
        return _submit_form(request, caller, 409, text, error=str(exc))
    if done.created:
        wake_dispatcher(request)
    return redirect(f"/ui/jobs/{done.job.id}")


def _submit_form(request: Request, caller: auth.Caller, status: int, text: str, **extra: Any) -> Response:
    """The form again, with a fresh idempotency key: the corrected spec is a new request."""
    return render(request, "submit.html", caller, status, title="Submit", spec_text=text,
                  idempotency_key=uuid.uuid4().hex, **extra)
