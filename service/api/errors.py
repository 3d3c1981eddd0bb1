"""The API's one error model: what every non-2xx response carries, how each failure maps to a status,
and the ``responses`` each route documents in the OpenAPI document.

Every error body is ``{"detail": ...}``: a one-line string a human can read, or -- for 422 -- the
list-shaped detail of FastAPI's ``HTTPValidationError`` (``loc`` / ``msg`` / ``type``, plus ``field``,
the dotted ``loc`` the CLI prints). 503s (database unreachable, pool exhausted, Ray backend missing)
and 429s carry ``Retry-After``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.jobs import store
from service.jobs.specs import SpecError
from service.state import IllegalTransition

log = logging.getLogger(__name__)


class ErrorOut(BaseModel):
    """Any error but a validation error."""

    detail: str = Field(description="what went wrong, in one line")
    status: str | None = Field(default=None, description="409 on a status change: the job's current status")
    job_id: int | None = Field(default=None, description="409 on an Idempotency-Key reuse: the first job")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="where: ['body', 'epochs'], ['query', 'limit'], ...")
    msg: str
    type: str
    field: str = Field(description="loc joined with dots, e.g. body.epochs")


class ValidationErrorOut(BaseModel):
    """422: the request is well-formed but names an invalid value (FastAPI's HTTPValidationError)."""

    detail: list[ValidationIssue]


_DESCRIPTIONS = {
    400: "malformed request (invalid JSON, bad header, bad cursor)",
    401: "missing, invalid, revoked or expired token",
    403: "the token is not valid for this job",
    404: "no such job (or not the caller's), trial or artifact",
    409: "conflicts with the job's current state or an earlier Idempotency-Key",
    413: "request body too large",
    422: "invalid value; detail lists every offending field",
    429: "rate limit exceeded; retry after Retry-After seconds",
    502: "Ray answered with an error",
    503: "database or Ray unavailable; retry after Retry-After seconds",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for ``codes``, all with the one error model."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model = ValidationErrorOut if code == 422 else ErrorOut
        out[code] = {"model": model, "description": _DESCRIPTIONS[code]}
    return out


# What every authenticated /v1 route can answer, and what the drivers' routes can.
V1_ERRORS = (401, 422, 429, 503)
JOB_ERRORS = (*V1_ERRORS, 404)
INTERNAL_ERRORS = (400, 401, 403, 404, 409, 413, 422, 503)


# ------------------------------------------------------------------------------------- bodies


def _is_index(part: str) -> bool:
    # str.isdigit() is also true for "²" and other Unicode digits that int() refuses.
    return part.isascii() and part.isdigit()


def issue(field: str, msg: str, type_: str = "value_error") -> dict[str, Any]:
    loc: list[str | int] = [int(p) if _is_index(p) else p for p in field.split(".")] if field else ["body"]
    return {"loc": loc, "msg": msg, "type": type_, "field": field or "body"}


def error_response(code: int, detail: str, *, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=code, headers=headers)


def validation_response(issues: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": issues}, status_code=422)


DB_UNAVAILABLE = (OperationalError, DisconnectionError, PoolTimeout)


def is_db_unavailable(exc: BaseException) -> bool:
    """A fault of the database connection (down, unreachable, timed out, pool exhausted), as opposed
    to a bug in a query: the former is worth a retry, the latter a 500."""
    if isinstance(exc, DB_UNAVAILABLE):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def install(app: FastAPI, *, retry_after_s: int) -> None:
    retry_after = {"Retry-After": str(retry_after_s)}

    @app.exception_handler(SpecError)
    async def spec_error(_: Request, exc: SpecError) -> JSONResponse:
        return validation_response([issue(f, m) for f, m in exc.errors])

    @app.exception_handler(RequestValidationError)
    async def request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        issues = []
        for e in exc.errors():
            field = ".".join(str(p) for p in e.get("loc", ()))
            found = issue(field, str(e.get("msg", "invalid")), str(e.get("type", "value_error")))
            issues.append(found)
        return validation_response(issues)

    @app.exception_handler(store.JobNotFound)
    async def not_found(_: Request, exc: store.JobNotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(IllegalTransition)
    async def illegal(_: Request, exc: IllegalTransition) -> JSONResponse:
        return error_response(409, str(exc), status=exc.current)

    @app.exception_handler(store.IdempotencyConflict)
    async def idem_conflict(_: Request, exc: store.IdempotencyConflict) -> JSONResponse:
        return error_response(409, str(exc), job_id=exc.job_id)

    @app.exception_handler(store.InvalidCursor)
    async def bad_cursor(_: Request, exc: store.InvalidCursor) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 503:
            headers.setdefault("Retry-After", retry_after["Retry-After"])
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    async def database_fault(request: Request, exc: Exception) -> JSONResponse:
        if not is_db_unavailable(exc):
            return await unexpected(request, exc)
        log.error("database unavailable",
                  extra={"path": request.url.path, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return error_response(503, "database unavailable, retry later", headers=retry_after)

    # Registered per class (not only under Exception): Starlette re-raises what reaches its
    # Exception handler, and a database outage is an answer, not a crash.
    for cls in (DBAPIError, DisconnectionError, PoolTimeout):
        app.add_exception_handler(cls, database_fault)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, f"internal error ({type(exc).__name__}); see the service log")


# ----------------------------------------------------------------------------------- document


def _codes_for(path: str, method: str) -> tuple[int, ...]:
    """The error statuses an operation can answer, by where it lives (auth, body, path params)."""
    if path.startswith("/internal/"):
        return INTERNAL_ERRORS
    if path == "/metrics":
        return (503,)  # it counts jobs in the database
    if not path.startswith("/v1/"):
        return ()
    codes = {400, *V1_ERRORS}
    if "{" in path or path == "/v1/compare":  # compare names jobs in its query
        codes.add(404)
    if method in ("post", "put", "patch", "delete"):
        codes |= {409, 413}
    if path.endswith("/logs"):
        codes.add(502)
    return tuple(sorted(codes))


def _error_entry(code: int) -> dict[str, Any]:
    name = "ValidationErrorOut" if code == 422 else "ErrorOut"
    entry: dict[str, Any] = {
        "description": _DESCRIPTIONS[code],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }
    if code in (429, 503):
        entry["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return entry


# Request bodies routes parse themselves (the drivers' lenient JSON), documented by name.
_REQUEST_MODELS: dict[str, type[BaseModel]] = {}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its JSON body itself: documents ``model`` as the body
    (``document`` adds it to the components), so clients and fuzzers know what to send."""
    _REQUEST_MODELS[model.__name__] = model
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def document(app: FastAPI) -> None:
    """Make the served OpenAPI document list every error each operation can answer, all in the one
    model above (and 422 as ValidationErrorOut rather than FastAPI's stock HTTPValidationError)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorOut, ValidationIssue, ValidationErrorOut, *_REQUEST_MODELS.values()):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                out = op.setdefault("responses", {})
                codes = set(_codes_for(path, method)) | ({422} if "422" in out else set())
                for code in sorted(codes):
                    out[str(code)] = _error_entry(code)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
