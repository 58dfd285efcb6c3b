"""The fake as respx sees it: every httpx request to the base URL comes here, is recorded,
checked (API key, rate limit, faults) and dispatched to its endpoint; ``latency=``
seconds before every request is handled (async clients).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import httpx

from testing.stripe.errors import StripeError
from testing.stripe.faults import _Fault
from testing.stripe.idempotency import Idempotency
from testing.stripe.params import parse_form
from testing.stripe.shapes import RecordedRequest, _Saved
from testing.stripe.wire import _Route


class Http(Idempotency):
    """Request handling: from an httpx request to the endpoint's answer."""

    def _handle(self, request: httpx.Request) -> httpx.Response | Coroutine[Any, Any, Any]:
        if self.latency > 0:
            return self._after_latency(request)
        return self._handle_now(request)

    async def _after_latency(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.latency)
        response = self._handle_now(request)
        if not isinstance(response, httpx.Response):  # a delay fault: in flight a while more
            response = await response
        return response

    def _handle_now(self, request: httpx.Request) -> httpx.Response | Coroutine[Any, Any, Any]:
        self._tick += 1
        self.moment += 1
        request_id = self._new_id("req_", 14)
        method = request.method.upper()
        path = request.url.path
        if self._base_path and path.startswith(self._base_path):
            path = path[len(self._base_path) :] or "/"
        text = request.content.decode() if method == "POST" else request.url.query.decode()
        params = parse_form(text)
        key = request.headers.get("idempotency-key") if method == "POST" else None
        req = RecordedRequest(method, path, params, key)
        self.requests.append(req)

        if (auth_error := self._authorized(request)) is not None:
            return self._error(auth_error, request_id)
        route, args = self._match(method, path)
        if route is not None and self._over_rate_limit(route):
            self.rate_limited.append(req)
            return self._error(
                StripeError(
                    429,
                    "Request rate limit exceeded. Learn more about rate limits "
                    "here https://stripe.com/docs/rate-limits.",
                    type_="invalid_request_error",
                    code="rate_limit",
                ),
                request_id,
                key,
            )
        fault = self._pop_fault(route.step if route else None, req)
        if fault is not None and fault.kind == "timeout":
            raise httpx.ReadTimeout("fake: the request timed out", request=request)
        if route is None:
            return self._error(
                StripeError(
                    404,
                    f"Unrecognized request URL ({method}: {path})."
                    " Please see https://stripe.com/docs or we can help"
                    " at https://support.stripe.com/.",
                ),
                request_id,
            )
        if fault is not None and fault.kind == "delay":
            wait = asyncio.sleep(fault.seconds)
            return self._delayed(wait, True, request, route, args, req, None, request_id)
        if fault is not None and fault.kind == "after":
            return self._then(self._dispatch(request, route, args, req, None, request_id), fault)
        if fault is not None and fault.kind == "hold":
            assert fault.hold is not None
            held = fault.hold
            return self._delayed(
                held.wait(), held.reached, request, route, args, req, None, request_id
            )
        return self._dispatch(request, route, args, req, fault, request_id)

    async def _delayed(
        self,
        wait: Coroutine[Any, Any, Any],
        reached: bool,
        request: httpx.Request,
        route: _Route,
        args: tuple[str, ...],
        req: RecordedRequest,
        fault: _Fault | None,
        request_id: str,
    ) -> httpx.Response:
        """A request that stalls: at Stripe already (``reached``: its key is in flight
        meanwhile), or on the way there (it reaches Stripe when the wait is over)."""
        key = req.idempotency_key
        if not reached:
            await wait
            return self._dispatch(request, route, args, req, fault, request_id)
        if key and key in self._idem:
            if not self._idem[key].in_flight:
                await wait  # a replay that is slow to come back
            else:
                wait.close()
            return self._dispatch(request, route, args, req, fault, request_id)
        placeholder = None
        if key:
            placeholder = _Saved(req.method, req.path, req.params, in_flight=True)
            self._idem[key] = placeholder
        try:
            await wait
        finally:
            if placeholder is not None and self._idem.get(key or "") is placeholder:
                del self._idem[key or ""]
        return self._dispatch(request, route, args, req, fault, request_id)

    def _dispatch(
        self,
        request: httpx.Request,
        route: _Route,
        args: tuple[str, ...],
        req: RecordedRequest,
        fault: _Fault | None,
        request_id: str,
    ) -> httpx.Response:
        key = req.idempotency_key
        saved = self._idem.get(key) if key else None
        if saved is not None:
            response = self._replay(saved, req, request_id, fault)
        elif fault is not None and fault.kind == "fail":
            response = self._injected_failure(fault, req, request_id)
        else:
            response = self._execute(route, args, req, request_id)
        if fault is not None and fault.kind == "lose_response":
            raise httpx.ReadTimeout("fake: the response was lost", request=request)
        return response
