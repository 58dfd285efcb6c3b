"""Faults, one-shot and queued: ``fail_next`` (a 5xx is saved under the key, as at Stripe),
``timeout_next``, ``lose_response_next``, ``delay_next``, ``hold_next`` (a stall the test
releases), ``rate_limit_next`` (a 429, with or without ``Stripe-Should-Retry``), and
``after_next``: something happens (a webhook, finance) between a request running at
Stripe and its caller reading the answer. Stripe's limiter too: ``rate_limit_per_endpoint=``
/ ``rate_limit_total=`` requests per second refuse what goes over with a 429.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from testing.stripe.errors import StripeError
from testing.stripe.shapes import Json, RecordedRequest, Target, _Saved
from testing.stripe.wire import STEPS, Wire, _Route


@dataclass
class _Fault:
    kind: str  # fail | timeout | lose_response | delay | hold | after
    target: Target
    status: int = 500
    error: Json | None = None
    saved: bool | None = None
    should_retry: bool | None = None
    seconds: float = 0.0
    hold: Hold | None = None
    action: Callable[[], Any] | None = None


class Hold:
    """A stalled request (``StripeFake.hold_next``): ``arrived`` is set once the request
    is stalled; ``release()`` lets it go on."""

    def __init__(self, *, reached: bool) -> None:
        self.reached = reached
        self.arrived = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def wait(self) -> None:
        self.arrived.set()
        await self._released.wait()


class Faults(Wire):
    """What a test makes go wrong, and Stripe's rate limiter."""

    def after_next(self, target: Target, action: Callable[[], Any]) -> None:
        """Next matching request runs, then ``action`` runs (awaited if it returns an
        awaitable) before the response is on its way back: what Stripe, finance or a
        webhook did between a request and its caller hearing the answer."""
        self._queue(_Fault("after", target, action=action))

    def rate_limit_next(self, target: Target, *, should_retry: bool | None = None) -> None:
        """Next matching request gets a 429 ``rate_limit`` (not saved under its key), with
        ``Stripe-Should-Retry`` set as told (stripe-python retries only ``true``)."""
        self.fail_next(target, status=429, saved=False, should_retry=should_retry)

    def hold_next(self, target: Target, *, reached: bool = True) -> Hold:
        """Next matching request stalls until the test calls ``release()`` on the returned
        hold (async clients only). ``reached=True``: the request is at Stripe, in flight
        (its key answers 409 ``idempotency_key_in_use`` meanwhile) and runs on release;
        ``False``: it is stuck on the way and reaches Stripe only on release."""
        hold = Hold(reached=reached)
        self._queue(_Fault("hold", target, hold=hold))
        return hold

    def fail_next(
        self,
        target: Target,
        status: int = 500,
        *,
        error: Json | None = None,
        saved: bool | None = None,
        should_retry: bool | None = None,
    ) -> None:
        """Next matching request returns ``status`` without running the endpoint. A 5xx is
        saved under the request's idempotency key (as at Stripe) unless ``saved=False``;
        ``should_retry`` sets the ``Stripe-Should-Retry`` header."""
        self._queue(
            _Fault(
                "fail", target, status=status, error=error, saved=saved, should_retry=should_retry
            )
        )

    def timeout_next(self, target: Target) -> None:
        """Next matching request raises httpx.ReadTimeout without running the endpoint."""
        self._queue(_Fault("timeout", target))

    def lose_response_next(self, target: Target) -> None:
        """Next matching request runs (and is saved under its key), then httpx.ReadTimeout."""
        self._queue(_Fault("lose_response", target))

    def delay_next(self, target: Target, seconds: float) -> None:
        """Next matching request stays in flight for ``seconds`` (async clients only): a
        second request with the same key meanwhile gets 409 idempotency_key_in_use."""
        self._queue(_Fault("delay", target, seconds=seconds))

    @property
    def pending_faults(self) -> list[tuple[str, Target]]:
        return [(f.kind, f.target) for f in self._faults]

    def clear_faults(self) -> None:
        self._faults.clear()

    def _queue(self, fault: _Fault) -> None:
        target = fault.target
        if (
            isinstance(target, str)
            and not target.startswith("/")
            and " " not in target
            and target not in STEPS
        ):
            raise ValueError(f"unknown step {target!r}; steps: {', '.join(STEPS)}")
        self._faults.append(fault)

    def _pop_fault(self, step: str | None, req: RecordedRequest) -> _Fault | None:
        for i, fault in enumerate(self._faults):
            if self._target_matches(fault.target, step, req):
                return self._faults.pop(i)
        return None

    async def _then(self, response: httpx.Response, fault: _Fault) -> httpx.Response:
        assert fault.action is not None
        outcome = fault.action()
        if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
            await outcome
        return response

    def _over_rate_limit(self, route: _Route) -> bool:
        """Stripe's limiter (a one-second sliding window): per endpoint, then overall."""
        if self.rate_limit_per_endpoint is None and self.rate_limit_total is None:
            return False
        now = time.monotonic()
        checks = [
            (f"{route.method} {route.regex.pattern}", self.rate_limit_per_endpoint),
            ("*", self.rate_limit_total),
        ]
        windows = []
        for name, limit in checks:
            if limit is None:
                continue
            window = self._windows.setdefault(name, [])
            while window and window[0] <= now - 1.0:
                window.pop(0)
            if len(window) >= limit:
                return True
            windows.append(window)
        for window in windows:
            window.append(now)
        return False

    def _injected_failure(
        self, fault: _Fault, req: RecordedRequest, request_id: str, save: bool = True
    ) -> httpx.Response:
        err = self._fault_error(fault)
        headers = {}
        if fault.should_retry is not None:
            headers["Stripe-Should-Retry"] = "true" if fault.should_retry else "false"
        body = err.body()
        saved = fault.saved if fault.saved is not None else fault.status >= 500
        if save and saved and req.idempotency_key:
            self._idem[req.idempotency_key] = _Saved(
                req.method,
                req.path,
                req.params,
                fault.status,
                body,
                request_id,
                extra_headers=headers,
            )
        return self._response(
            fault.status, body, key=req.idempotency_key, request_id=request_id, extra=headers
        )

    @staticmethod
    def _fault_error(fault: _Fault) -> StripeError:
        if fault.error is not None:
            err = StripeError(fault.status, str(fault.error.get("message", "error")))
            err.error = dict(fault.error)
            return err
        if fault.status == 429:
            return StripeError(
                429,
                "Request rate limit exceeded. Learn more about rate limits "
                "here https://stripe.com/docs/rate-limits.",
                code="rate_limit",
            )
        if fault.status == 409:
            return StripeError(
                409,
                "This object cannot be accessed right now because another "
                "API request or Stripe process is currently accessing it.",
                code="lock_timeout",
            )
        if fault.status >= 500:
            return StripeError(fault.status, "An unknown error occurred", type_="api_error")
        return StripeError(fault.status, "Injected error")
