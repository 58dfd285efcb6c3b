"""FastAPI dependencies shared by the /v1 routes: the services and the caller."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import auth
from api.schemas import ErrorOut
from api.services import Services, services

# Documents the bearer scheme in /openapi.json; the checks are ours (auth.py).
_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT")


async def caller(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> auth.Caller:
    svc = services(request)
    token = auth.bearer(request.headers.get("authorization"))
    return auth.decode(token, svc.app_secret, svc.settings.jwt_max_lifetime_seconds)


async def _services(request: Request) -> Services:
    # async: FastAPI would run a plain function in its thread pool, on every request.
    return services(request)


Svc = Annotated[Services, Depends(_services)]
Who = Annotated[auth.Caller, Depends(caller)]


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error responses a route can give, for the OpenAPI document."""
    what = {
        400: "bad request (a path holding a control character, a bad Content-Length)",
        401: "no token, a bad signature, another algorithm than HS256, or an expired token",
        403: "the wrong team or role",
        404: "unknown team, job or bill",
        409: "a conflict (an idempotency key reused with other parameters, an anchor change)",
        413: "the request body is larger than this route's limit",
        422: "bad input",
        503: "the database or the queue cannot be reached (see Retry-After)",
    }
    return {s: {"model": ErrorOut, "description": what[s]} for s in statuses}


AUTHED = (400, 401, 403, 404, 422, 503)
WITH_BODY = (*AUTHED, 413)
