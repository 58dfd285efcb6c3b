"""The objects the fake keeps, and how a request finds and prints them: ids, the clock,
look-ups, ``expand`` and pagination. The bottom of the fake's layers (see fake.py).
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import respx

from testing.stripe.errors import StripeError, _missing, _no_such
from testing.stripe.params import _clone, _limit, _str
from testing.stripe.shapes import (
    DEFAULT_API_KEY,
    DEFAULT_BASE,
    MINIMUM_CHARGE,
    Json,
    PayAttempt,
    RecordedRequest,
    _Saved,
)

if TYPE_CHECKING:
    from testing.stripe.faults import Hold, _Fault
    from testing.stripe.wire import _Route


_ID_CHARS = string.ascii_letters + string.digits


class Store:
    """The fake's state; the layers above add the endpoints, faults and the wire."""

    def __init__(
        self,
        base: str = DEFAULT_BASE,
        api_key: str = DEFAULT_API_KEY,
        *,
        search_lag_calls: int = 0,
        seed: int | None = None,
        now: int | None = None,
        latency: float = 0.0,
        rate_limit_per_endpoint: float | None = None,
        rate_limit_total: float | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        # Seconds every request spends on the wire before Stripe handles it (async
        # clients only): a benchmark's stand-in for Stripe's round trip.
        self.latency = latency
        self.api_key = api_key
        self.search_lag_calls = search_lag_calls
        # Stripe's limiter: requests per second per endpoint (method and path pattern)
        # and overall; what goes over gets a 429 (never saved under its key).
        self.rate_limit_per_endpoint = rate_limit_per_endpoint
        self.rate_limit_total = rate_limit_total
        self.rate_limited: list[RecordedRequest] = []
        self._windows: dict[str, list[float]] = {}
        self.now = now
        self.minimum_charge = dict(MINIMUM_CHARGE)

        self.customers: dict[str, Json] = {}
        self.invoices: dict[str, Json] = {}
        self.invoice_items: dict[str, Json] = {}
        self.subscriptions: dict[str, Json] = {}  # see subscriptions.py
        self.requests: list[RecordedRequest] = []
        self.executed: list[RecordedRequest] = []  # requests whose endpoint actually ran
        self.internal_errors: list[BaseException] = []  # bugs in the fake itself
        # The events Stripe would send to webhook endpoints, oldest first (see events.py).
        self.events: list[Json] = []
        self.pay_attempts: list[PayAttempt] = []
        # One counter over requests and Stripe's own state changes: orders both.
        self.moment = 0
        self._status_moment: dict[str, int] = {}

        self._rng = random.Random(seed)
        self._cards: dict[str, str | None] = {}  # customer -> decline code or None (works)
        self._no_payment_method: set[str] = set()
        self._coupons: dict[str, Json] = {}  # coupon id -> coupon
        self._discounts_by_id: dict[str, str] = {}  # invoice discount id -> coupon id
        self._holds: list[Hold] = []
        self._faults: list[_Fault] = []
        self._idem: dict[str, _Saved] = {}
        self._tick = 0
        self._seq = 0
        self._order: dict[str, int] = {}
        self._search_versions: dict[str, list[tuple[int, Json]]] = {}
        self._base_path = urlsplit(self.base).path.rstrip("/")
        self._routes = self._build_routes()

        self.router = respx.MockRouter(base_url=self.base, assert_all_called=False)
        self.router.route().mock(side_effect=self._handle)

    def _build_routes(self) -> list[_Route]:
        raise NotImplementedError  # the routing table: wire.py

    def _handle(self, request: httpx.Request) -> httpx.Response | Coroutine[Any, Any, Any]:
        raise NotImplementedError  # request handling: http.py

    def _now(self) -> int:
        return int(self.now if self.now is not None else time.time())

    def _new_id(self, prefix: str, length: int = 24) -> str:
        return prefix + "".join(self._rng.choice(_ID_CHARS) for _ in range(length))

    def _remember(self, obj: Json) -> None:
        self._seq += 1
        self._order[obj["id"]] = self._seq

    def _customer(self, cus_id: str | None, param: str = "customer") -> Json:
        if cus_id is None:
            raise _missing(param)
        cus = self.customers.get(cus_id)
        if cus is None or cus.get("deleted"):
            raise _no_such("customer", cus_id, param)
        return cus

    def _invoice(self, inv_id: str, param: str = "id", status: int = 404) -> Json:
        inv = self.invoices.get(inv_id)
        if inv is None:
            raise _no_such("invoice", inv_id, param, status)
        return inv

    def _render_invoice(self, inv: Json, params: dict[str, Any] | None = None) -> Json:
        out = _clone(inv)
        lines = out["lines"]
        lines["has_more"] = len(lines["data"]) > 10
        lines["data"] = lines["data"][:10]
        return self._expand(out, params or {}, {"customer": self.customers})

    def _expand(
        self, obj: Json, params: dict[str, Any], sources: dict[str, dict[str, Json]]
    ) -> Json:
        expand = params.get("expand") or []
        for field in expand if isinstance(expand, list) else [expand]:
            if field not in sources:
                raise StripeError(
                    400, f"This property cannot be expanded ({field}).", param="expand"
                )
            ref = obj.get(field)
            if isinstance(ref, str) and ref in sources[field]:
                obj[field] = _clone(sources[field][ref])
        return obj

    def _paginate(self, objs: list[Json], params: dict[str, Any], url: str, kind: str) -> Json:
        limit = _limit(params)
        ids = [o["id"] for o in objs]
        after, before = _str(params, "starting_after"), _str(params, "ending_before")
        if after is not None:
            if after not in ids:
                raise _no_such(kind, after, "starting_after")
            rest = objs[ids.index(after) + 1 :]
            page, has_more = rest[:limit], len(rest) > limit
        elif before is not None:
            if before not in ids:
                raise _no_such(kind, before, "ending_before")
            rest = objs[: ids.index(before)]
            page, has_more = rest[-limit:], len(rest) > limit
        else:
            page, has_more = objs[:limit], len(objs) > limit
        return {"object": "list", "data": page, "has_more": has_more, "url": url}
