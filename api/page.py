"""The billing page: the seeds' four numbered panels as server-rendered HTML.

The token comes once as `?token=`; the page then keeps it in an HttpOnly,
SameSite=Strict cookie and redirects to a clean address (no token in the
history or a Referer). The limit form is for the team's admins only; it
carries a CSRF token derived from the session (HMAC of the cookie's token
with the app secret), checked on POST along with the Origin when sent. No
JavaScript anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from functools import cache
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from api import auth
from api.app import Services, services
from api.errors import ApiError, status_of
from api.teams import READERS, change_limit, history_page, parse_cursor
from cli import render
from ledger import validate
from ledger.errors import TokensError, UnknownTeam

router = APIRouter(include_in_schema=False)

COOKIE = "tokens_session"
PAGE_SIZE = 25


@cache
def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("api", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["minute"] = lambda iso: _shorten(iso, 16)  # 2026-03-10T12:34 -> 2026-03-10 12:34
    env.filters["day"] = lambda iso: _shorten(iso, 10)
    return env


def _shorten(iso: str | None, length: int) -> str:
    """A UTC ISO 8601 time for reading (the full value stays in <time datetime>)."""
    return "" if not iso else iso[:length].replace("T", " ")


def csrf_token(secret: str, session: str) -> str:
    """Tied to the session: only a page served to this cookie's holder knows it."""
    return hmac.new(secret.encode(), b"csrf:" + session.encode(), hashlib.sha256).hexdigest()


def _html(name: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    body = templates().get_template(name).render(**context)
    return HTMLResponse(
        body,
        status_code=http_status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "Referrer-Policy": "same-origin",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _error_page(exc: ApiError) -> HTMLResponse:
    return _html("error.html", exc.status, status=exc.status, code=exc.code, message=exc.message)


def _session(request: Request, svc: Services) -> tuple[str, auth.Caller]:
    token = request.cookies.get(COOKIE)
    if not token:
        raise auth.unauthenticated(
            "missing_token", "open this page with ?token=<JWT> from the application"
        )
    return token, auth.decode(token, svc.app_secret)


@router.get("/teams/{team:path}/billing", response_class=HTMLResponse)
async def billing_page(
    team: str,
    request: Request,
    token: Annotated[str | None, Query(max_length=4096)] = None,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    saved: Annotated[str | None, Query(max_length=8)] = None,
) -> Response:
    svc = services(request)
    try:
        validate.team_id(team)
        parse_cursor(cursor)
        if token is not None:
            return _sign_in(request, svc, team, token, cursor)
        session, who = _session(request, svc)
        auth.authorize(who, team, READERS)
        return await _render(svc, team, who, session, cursor=cursor, saved=saved is not None)
    except ApiError as exc:
        return _error_page(exc)
    except TokensError as exc:
        return _error_page(ApiError(status_of(exc), exc.code, str(exc)))


def _sign_in(
    request: Request, svc: Services, team: str, token: str, cursor: str | None
) -> Response:
    """Check the token, keep it in the cookie, and drop it from the address."""
    who = auth.decode(token, svc.app_secret)
    auth.authorize(who, team, READERS)
    target = f"/teams/{quote(team, safe='')}/billing" + (f"?cursor={cursor}" if cursor else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(who.exp - int(time.time()), 0),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def _render(
    svc: Services,
    team: str,
    who: auth.Caller,
    session: str,
    *,
    cursor: str | None,
    saved: bool = False,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    now = svc.clock()
    section = await svc.ledger.billing(team, at=now)
    charges, next_cursor = await history_page(svc, team, cursor=cursor, limit=PAGE_SIZE)
    alerts = [
        a.as_dict() for a in await svc.ledger.alerts(team) if a.period_start == section.period_start
    ]
    return _html(
        "billing.html",
        status,
        s=render.billing_dict(section, at=now),
        alerts=alerts,
        charges=[render.charge_dict(c) for c in charges],
        next_cursor=next_cursor,
        paged=cursor is not None,
        who=who,
        is_admin=who.role == auth.ADMIN and who.team == team,
        csrf=csrf_token(svc.app_secret, session),
        saved=saved,
        error=error,
    )


def _same_origin(request: Request) -> bool:
    """A browser's POST names its origin: another site's is refused. An absent or opaque
    ("null") origin proves nothing either way; the CSRF token decides."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.headers.get("host")


@router.post("/teams/{team:path}/billing/limit", response_class=HTMLResponse)
async def change_limit_form(
    team: str,
    request: Request,
    tokens: Annotated[str, Form(max_length=20)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    svc = services(request)
    try:
        session, who = _session(request, svc)
        if not _same_origin(request) or not hmac.compare_digest(
            csrf, csrf_token(svc.app_secret, session)
        ):
            raise ApiError(403, "csrf", "this form was not sent from its page; reload and retry")
        auth.authorize(who, team, (auth.ADMIN,))
    except ApiError as exc:
        return _error_page(exc)
    text = tokens.strip()
    try:
        # ASCII digits only: str.isdigit() and int() take other scripts' digits too.
        if not re.fullmatch(r"-?[0-9]{1,30}", text):
            raise ApiError(
                422, "invalid_limit", f"the limit must be a whole number, got {text[:40]!r}"
            )
        await change_limit(svc, team, int(text), who)
    except ApiError as exc:
        return await _render(svc, team, who, session, cursor=None, error=exc.message, status=422)
    except TokensError as exc:
        if isinstance(exc, UnknownTeam):
            return _error_page(ApiError(404, exc.code, str(exc)))
        status = status_of(exc)
        return await _render(svc, team, who, session, cursor=None, error=str(exc), status=status)
    return RedirectResponse(f"/teams/{quote(team, safe='')}/billing?saved=1", status_code=303)
