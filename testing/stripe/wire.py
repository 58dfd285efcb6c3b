"""What goes over the wire: the routing table (step names, path patterns), the API key
check, and the headers and bodies of every answer.

Targets for faults and ``calls`` are a step name (see ``STEPS``),
``"METHOD /v1/path/*/pattern"``, a ``(method, pattern)`` tuple, or a bare
``"/v1/path/*"`` pattern (any method); ``*`` stands for one path segment.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from testing.stripe.errors import StripeError
from testing.stripe.shapes import API_VERSION, Json, RecordedRequest, Target
from testing.stripe.subscriptions import Subscriptions

# step name -> (method, path pattern); "*" is one path segment
STEPS: dict[str, tuple[str, str]] = {
    "create_customer": ("POST", "/v1/customers"),
    "retrieve_customer": ("GET", "/v1/customers/*"),
    "delete_customer": ("DELETE", "/v1/customers/*"),
    "create_invoice": ("POST", "/v1/invoices"),
    "list_invoices": ("GET", "/v1/invoices"),
    "search_invoices": ("GET", "/v1/invoices/search"),
    "retrieve_invoice": ("GET", "/v1/invoices/*"),
    "update_invoice": ("POST", "/v1/invoices/*"),
    "delete_invoice": ("DELETE", "/v1/invoices/*"),
    "list_lines": ("GET", "/v1/invoices/*/lines"),
    "finalize": ("POST", "/v1/invoices/*/finalize"),
    "pay": ("POST", "/v1/invoices/*/pay"),
    "void": ("POST", "/v1/invoices/*/void"),
    "mark_uncollectible": ("POST", "/v1/invoices/*/mark_uncollectible"),
    "create_invoiceitem": ("POST", "/v1/invoiceitems"),
    "list_invoiceitems": ("GET", "/v1/invoiceitems"),
    "retrieve_invoiceitem": ("GET", "/v1/invoiceitems/*"),
    "update_invoiceitem": ("POST", "/v1/invoiceitems/*"),
    "delete_invoiceitem": ("DELETE", "/v1/invoiceitems/*"),
}


@dataclass(frozen=True)
class _Route:
    method: str
    regex: re.Pattern[str]
    step: str
    handler: Callable[..., Json]


def _path_match(pattern: str, path: str) -> bool:
    want, got = pattern.strip("/").split("/"), path.strip("/").split("/")
    return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got, strict=True))


class Wire(Subscriptions):
    """Routes, authorization, responses."""

    def calls(self, target: Target) -> list[RecordedRequest]:
        """The recorded requests that match a step name or path pattern."""
        return [
            r
            for r in self.requests
            if self._target_matches(target, self._step_of(r.method, r.path), r)
        ]

    def _build_routes(self) -> list[_Route]:
        seg = r"([^/]+)"
        table: list[tuple[str, str, str, Callable[..., Json]]] = [
            ("POST", "/v1/customers", "create_customer", self._create_customer),
            ("GET", f"/v1/customers/{seg}", "retrieve_customer", self._retrieve_customer),
            ("DELETE", f"/v1/customers/{seg}", "delete_customer", self._delete_customer),
            ("POST", "/v1/invoices", "create_invoice", self._create_invoice),
            ("GET", "/v1/invoices", "list_invoices", self._list_invoices),
            ("GET", "/v1/invoices/search", "search_invoices", self._search_invoices),
            ("GET", f"/v1/invoices/{seg}", "retrieve_invoice", self._retrieve_invoice),
            ("POST", f"/v1/invoices/{seg}", "update_invoice", self._update_invoice),
            ("DELETE", f"/v1/invoices/{seg}", "delete_invoice", self._delete_invoice),
            ("GET", f"/v1/invoices/{seg}/lines", "list_lines", self._list_lines),
            ("POST", f"/v1/invoices/{seg}/finalize", "finalize", self._finalize),
            ("POST", f"/v1/invoices/{seg}/pay", "pay", self._pay),
            ("POST", f"/v1/invoices/{seg}/void", "void", self._void),
            (
                "POST",
                f"/v1/invoices/{seg}/mark_uncollectible",
                "mark_uncollectible",
                self._mark_uncollectible,
            ),
            ("POST", "/v1/invoiceitems", "create_invoiceitem", self._create_item),
            ("GET", "/v1/invoiceitems", "list_invoiceitems", self._list_items),
            ("GET", f"/v1/invoiceitems/{seg}", "retrieve_invoiceitem", self._retrieve_item),
            ("POST", f"/v1/invoiceitems/{seg}", "update_invoiceitem", self._update_item),
            ("DELETE", f"/v1/invoiceitems/{seg}", "delete_invoiceitem", self._delete_item),
            *self._subscription_routes(seg),
        ]
        return [_Route(m, re.compile(p), s, h) for m, p, s, h in table]

    def _match(self, method: str, path: str) -> tuple[_Route | None, tuple[str, ...]]:
        for route in self._routes:
            if route.method == method and (m := route.regex.fullmatch(path)):
                return route, m.groups()
        return None, ()

    def _step_of(self, method: str, path: str) -> str | None:
        route, _ = self._match(method, path)
        return route.step if route else None

    @staticmethod
    def _target_matches(target: Target, step: str | None, req: RecordedRequest) -> bool:
        if isinstance(target, tuple):
            method, pattern = target
        elif " " in target:
            method, pattern = target.split(" ", 1)
        elif target.startswith("/"):
            method, pattern = "", target
        else:
            return target == step
        if method and method.upper() != req.method:
            return False
        return _path_match(pattern.strip(), req.path)

    def _authorized(self, request: httpx.Request) -> StripeError | None:
        auth = request.headers.get("authorization", "")
        key = ""
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        elif auth.lower().startswith("basic "):
            key = base64.b64decode(auth[6:]).decode(errors="replace").split(":", 1)[0]
        if not key:
            return StripeError(
                401,
                "You did not provide an API key. You need to provide your "
                "API key in the Authorization header, using Bearer auth "
                "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        if key != self.api_key:
            shown = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
            return StripeError(401, f"Invalid API Key provided: {shown}")
        return None

    def _response(
        self,
        status: int,
        body: Json,
        *,
        key: str | None,
        request_id: str,
        extra: dict[str, str] | None = None,
    ) -> httpx.Response:
        headers = {
            "Request-Id": request_id,
            "Stripe-Version": API_VERSION,
            "Content-Type": "application/json",
        }
        if key:
            headers["Idempotency-Key"] = key
        headers.update(extra or {})
        return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)

    def _error(
        self,
        err: StripeError,
        request_id: str,
        key: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = err.body()
        body["error"]["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return self._response(err.status, body, key=key, request_id=request_id, extra=extra)
