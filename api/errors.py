"""One error shape for every refusal: `{"error": {"code": ..., "message": ...}}`.

The ledger's typed errors are mapped to HTTP statuses here, once. A database
or Redis that cannot be reached, and a pool or statement past its deadline
(db/pool.py), are a 503 with Retry-After (the caller retries), never a 500.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledger import errors as ledger_errors
from runtime.transient import is_transient

log = structlog.get_logger("tokens.api")

RETRY_AFTER_S = 5

# Refusals by the ledger -> HTTP status (anything else of TokensError: 422).
STATUS: dict[type[ledger_errors.TokensError], int] = {
    ledger_errors.UnknownTeam: 404,
    ledger_errors.UnknownCharge: 404,
    ledger_errors.NotAdmin: 403,
    ledger_errors.IdempotencyMismatch: 409,
    ledger_errors.JobIdReused: 409,
    ledger_errors.ChargeAlreadySettled: 409,
    ledger_errors.AnchorConflict: 409,
    ledger_errors.NotEnoughTokens: 409,
    ledger_errors.MemberCapReached: 409,
    ledger_errors.NotMigrated: 503,
}

# Where an outage of Postgres or Redis surfaces; runtime/transient.py decides which
# of these are one (the worker uses the same classifier).
INFRASTRUCTURE: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    RedisError,
)


class ApiError(Exception):
    """A refusal decided by the HTTP layer itself (authentication, authorization, input)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body(code, message), status_code=status, headers=headers)


def status_of(exc: ledger_errors.TokensError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 422


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
}


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ledger_errors.TokensError)
    async def _ledger(request: Request, exc: ledger_errors.TokensError) -> JSONResponse:
        status = status_of(exc)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return error_response(status, exc.code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers)

    async def _infrastructure(request: Request, exc: Exception) -> JSONResponse:
        if is_busy(exc):
            log.warning("dependency_busy", path=request.url.path, error=repr(exc))
            return error_response(
                503,
                "unavailable",
                "the database is busy (no free connection, or a statement ran out of time); "
                "retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        if is_transient(exc):
            log.warning("dependency_unavailable", path=request.url.path, error=repr(exc))
            return error_response(
                503,
                "unavailable",
                "the database or queue cannot be reached right now; retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        log.error("request_failed", path=request.url.path, exc_info=exc)
        return error_response(500, "internal", "internal error")

    for kind in INFRASTRUCTURE:
        app.add_exception_handler(kind, _infrastructure)


def is_busy(exc: BaseException) -> bool:
    """A deadline of ours ran out: no pooled connection came in time (TimeoutError from
    the pool), or Postgres cancelled a statement past its statement_timeout or lock_timeout.
    The request may well succeed a moment later: a 503, never a 500 or a hang."""
    return isinstance(
        exc, TimeoutError | asyncpg.QueryCanceledError | asyncpg.LockNotAvailableError
    )


def validation_message(errors: Any) -> str:
    """The first problem of a pydantic validation, in one line naming where it is."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    body = _body_message(first, loc)
    if body is not None:
        return body
    where = ".".join(str(p) for p in loc if p != "body") or "request"
    return f"{where}: {first.get('msg', 'invalid')}"


def _body_message(first: dict[str, Any], loc: tuple[Any, ...]) -> str | None:
    """A body that is not a JSON object at all, said as such (pydantic's words, "16: JSON
    decode error" or "Input should be a valid dictionary", name no field)."""
    kind = first.get("type")
    if kind == "json_invalid" and loc[:1] == ("body",):
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        why = (first.get("ctx") or {}).get("error", "not JSON")
        return f"the request body is not valid JSON{at}: {why}"
    if loc != ("body",):
        return None
    if kind == "missing":
        return "a JSON object body is required (Content-Type: application/json)"
    if isinstance(first.get("input"), bytes | str):
        # FastAPI parses a body as JSON only when its Content-Type says so.
        return "the request body must be JSON, sent with Content-Type: application/json"
    return "the request body must be a JSON object"
