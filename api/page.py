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
from datetime import datetime
from functools import cache
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

import structlog
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from api import auth
from api.errors import INFRASTRUCTURE, RETRY_AFTER_S, ApiError, status_of
from api.services import Services, services
from api.teams import READERS, change_limit, history_page, parse_cursor
from ledger import shapes, validate
from ledger.errors import TokensError, UnknownTeam
from runtime.transient import is_transient

router = APIRouter(include_in_schema=False)
log = structlog.get_logger("tokens.api")

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


def error_page(exc: ApiError) -> HTMLResponse:
    page = _html("error.html", exc.status, status=exc.status, code=exc.code, message=exc.message)
    page.headers.update(exc.headers or {})
    return page


def _outage_page(exc: Exception) -> HTMLResponse:
    """A person in a browser reads an outage as a page, not as the API's JSON."""
    if not is_transient(exc):
        raise exc  # a bug: the app's handler logs it and answers 500
    log.warning("dependency_unavailable", path="billing page", error=repr(exc))
    return error_page(
        ApiError(
            503,
            "unavailable",
            "Billing cannot be shown right now: the database or the queue is unreachable. "
            "Reload this page in a few seconds.",
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    )


def no_session() -> ApiError:
    return auth.unauthenticated(
        "missing_token", "open this page with ?token=<JWT> from the application"
    )


def _session(request: Request, svc: Services) -> tuple[str, auth.Caller]:
    token = request.cookies.get(COOKIE)
    if not token:
        raise no_session()
    return token, auth.decode(token, svc.app_secret, svc.settings.jwt_max_lifetime_seconds)


@router.get("/teams/{team:path}/billing", response_class=HTMLResponse)
async def billing_page(
    team: str,
    request: Request,
    token: Annotated[str | None, Query(max_length=4096)] = None,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    month: Annotated[str | None, Query(max_length=40)] = None,
    saved: Annotated[str | None, Query(max_length=8)] = None,
) -> Response:
    svc = services(request)
    try:
        validate.team_id(team)
        parse_cursor(cursor)
        shown = _parse_month(month)
        if token is not None:
            return _sign_in(request, svc, team, token, cursor, month)
        session, who = _session(request, svc)
        auth.authorize(who, team, READERS)
        return await _render(
            svc, team, who, session, cursor=cursor, month=shown, saved=saved is not None
        )
    except ApiError as exc:
        return error_page(exc)
    except TokensError as exc:
        return error_page(_refusal(exc))
    except INFRASTRUCTURE as exc:
        return _outage_page(exc)


def _refusal(exc: TokensError) -> ApiError:
    status = status_of(exc)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return ApiError(status, exc.code, str(exc), headers)


def _parse_month(month: str | None) -> datetime | None:
    """`?month=`: the start of a billing month, as the page's own links give it."""
    if month is None:
        return None
    try:
        return validate.parse_moment(month, "month")
    except TokensError:
        raise ApiError(
            422, "invalid_month", f"month {month[:40]!r} is not one this page gave"
        ) from None


def _sign_in(
    request: Request,
    svc: Services,
    team: str,
    token: str,
    cursor: str | None,
    month: str | None,
) -> Response:
    """Check the token, keep it in the cookie, and drop it from the address."""
    who = auth.decode(token, svc.app_secret, svc.settings.jwt_max_lifetime_seconds)
    auth.authorize(who, team, READERS)
    query = urlencode({k: v for k, v in (("month", month), ("cursor", cursor)) if v})
    target = f"/teams/{quote(team, safe='')}/billing" + (f"?{query}" if query else "")
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
    month: datetime | None = None,
    saved: bool = False,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    now = svc.clock()
    section = await svc.ledger.billing(team, at=now)
    # The history is one billing month's (the current one unless another is
    # chosen), so its rows add up to that month's panels; the others are links.
    months = await svc.ledger.months(team, at=now)
    shown = month or section.period_start
    if not any(start == shown for start, _ in months):
        raise ApiError(
            404, "unknown_month", f"team {team!r} has no billing month starting {shapes.iso(shown)}"
        )
    charges, next_cursor = await history_page(
        svc, team, cursor=cursor, limit=PAGE_SIZE, month=shown
    )
    alerts = [
        a.as_dict() for a in await svc.ledger.alerts(team) if a.period_start == section.period_start
    ]
    return _html(
        "billing.html",
        status,
        s=shapes.billing_dict(section, at=now),
        alerts=alerts,
        charges=[shapes.charge_dict(c) for c in charges],
        next_cursor=next_cursor,
        paged=cursor is not None,
        months=[
            {
                "start": shapes.iso(start),
                "end": shapes.iso(end),
                "current": start == section.period_start,
            }
            for start, end in months
        ],
        shown=shapes.iso(shown),
        shown_is_current=shown == section.period_start,
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
        return error_page(exc)
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
        status = status_of(exc)
        if isinstance(exc, UnknownTeam) or status == 503:
            return error_page(_refusal(exc))
        return await _render(svc, team, who, session, cursor=None, error=str(exc), status=status)
    except INFRASTRUCTURE as exc:
        return _outage_page(exc)
    return RedirectResponse(f"/teams/{quote(team, safe='')}/billing?saved=1", status_code=303)
