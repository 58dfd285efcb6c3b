"""Request bodies: sized, and only read for a caller who proved who it is.

A pure ASGI middleware in front of every route. In this order:

0. A path holding a control character (`%0A`, `%00`, ...) is a 400: Starlette's
   route patterns end in `$`, which also matches before a final newline, so
   /v1/teams/acme%0A would reach the routes as team `acme`. No id of this API
   holds one.
1. A `Content-Length` over the route's limit is a 413 before anything else:
   nothing is read, nobody is authenticated.
2. A request that may carry a body (not GET, HEAD or OPTIONS) is authenticated
   from its headers alone: the bearer JWT on /v1 (but the Stripe webhook,
   which signs its body instead), the session cookie on the billing page's
   form. A refusal is a 401 before one byte of the body is read.
3. The body is read here, counted as it streams (a chunked request has no
   length to check), and refused with a 413 once it passes the limit; the
   route then parses what was read. Memory per request is bounded by the limit.

The limits (runtime/config.py) are per route: jobs and quotes carry lead lists,
the webhook Stripe's events, everything else a few fields.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import auth
from api.errors import ApiError, error_response

if TYPE_CHECKING:
    from starlette.responses import Response

    from api.services import Services

WEBHOOK = "/v1/stripe/webhook"
_LEAD_LISTS = re.compile(r"/v1/teams/.+/(jobs|quote)")
_PAGE_FORM = re.compile(r"/teams/.+/billing/limit")
_NO_BODY = ("GET", "HEAD", "OPTIONS")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def body_limit(settings_of: Services, path: str) -> int:
    settings = settings_of.settings
    if path == WEBHOOK:
        return settings.max_webhook_body_bytes
    if _LEAD_LISTS.fullmatch(path):
        return settings.max_jobs_body_bytes
    return settings.max_body_bytes


class BodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        svc: Services = scope["app"].state.services
        path: str = scope["path"]
        limit = body_limit(svc, path)
        try:
            if _CONTROL.search(path):
                raise ApiError(
                    400, "bad_path", "the request path holds a control character (a newline?)"
                )
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                raise _too_large(limit)
            if scope["method"] in _NO_BODY:
                await self.app(scope, receive, send)
                return
            _authenticate(svc, scope, path)
            body = await _read(receive, limit)
        except ApiError as refused:
            await _refusal(path, refused)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        await self.app(scope, _replay(body, receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                raise ApiError(400, "bad_request", "the Content-Length header is not a number")
            return int(value)
    return None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"the request body is larger than this route's limit of {limit} bytes",
        {"Connection": "close"},
    )


def _authenticate(svc: Services, scope: Scope, path: str) -> None:
    """The caller, from the headers only: a refused one never gets its body read."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    if path.startswith("/v1/") and path != WEBHOOK:
        token = auth.bearer(headers.get("authorization"))
    elif _PAGE_FORM.fullmatch(path):
        from api.page import COOKIE, no_session

        token = cookie_parser(headers.get("cookie", "")).get(COOKIE, "")
        if not token:
            raise no_session()
    else:
        return
    auth.decode(token, svc.app_secret, svc.settings.jwt_max_lifetime_seconds)


async def _read(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body, read already, as the app's first message; then the connection's own."""
    pending: list[bytes] = [body]

    async def replayed() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed


def _refusal(path: str, refused: ApiError) -> Response:
    headers = dict(refused.headers or {})
    if _PAGE_FORM.fullmatch(path):
        from api.page import error_page

        page = error_page(refused)
        page.headers.update(headers)
        return page
    return error_response(refused.status, refused.code, refused.message, headers)
