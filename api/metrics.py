"""Prometheus metrics of the HTTP API (served at /metrics with the process's others)."""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Histogram(
    "tokens_http_request_seconds",
    "HTTP requests by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


# `{team:path}` is labelled `{team}`: the convertor is how a route reads the id,
# not part of the route's name on dashboards.
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


class RequestMetrics:
    """Pure ASGI middleware: one histogram observation per request, labelled by the
    route's template (`/v1/teams/{team}/billing`), never by the raw path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            template = _CONVERTOR.sub(r"{\1}", getattr(route, "path", None) or "unmatched")
            REQUESTS.labels(template, scope["method"], str(status)).observe(
                time.perf_counter() - started
            )
