"""The Stripe client: async over httpx, built once per process and passed down.

Its HTTP client paces requests and retries rate limits (README "Billing with Stripe",
Rate limits):

- stripe-python 16.1.0 retries connection errors, 409 and 5xx, and whatever is
  answered with `Stripe-Should-Retry: true`, but not a plain 429
  (`stripe/_http_client.py`, `HTTPClient._should_retry`): 429s are ours.
  A 429 is answered before the endpoint runs, so nothing is saved under its
  idempotency key ("We save results only after the execution of an endpoint
  begins", docs.stripe.com/idempotency): the same request, same key, is retried
  here with exponential backoff and jitter (50-100 ms first, doubling, capped
  at 16 s, 10 times: about a minute), and reaches the sender as an error only
  after that. The endpoint's pacing slot moves back by the same delay, so the
  other requests queued for it wait too.
- Stripe limits requests per endpoint (25/s by default) and per account (about
  100/s live, 25/s test mode; docs.stripe.com/rate-limits). One pacer per
  process spaces requests evenly: at most TOKENS_STRIPE_MAX_RPS per endpoint
  (method and path, ids left out) and TOKENS_STRIPE_MAX_TOTAL_RPS overall,
  whatever the number of concurrent senders. Pacing happens per HTTP attempt,
  so stripe-python's own retries are paced too.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import stripe

from runtime.config import Settings

_ID_SEGMENT = re.compile(r"^[a-z]+_[A-Za-z0-9]+$")


def endpoint_of(method: str, url: str) -> str:
    """`POST /v1/invoices/{id}/finalize`: Stripe's unit of rate limiting."""
    path = url.split("://", 1)[-1]
    path = path[path.find("/") :] if "/" in path else "/"
    path = path.split("?", 1)[0]
    parts = ["{id}" if _ID_SEGMENT.match(p) else p for p in path.split("/")]
    return f"{method.upper()} {'/'.join(parts)}"


class Pacer:
    """Spaces requests evenly: `per_endpoint` a second for each endpoint and `total`
    a second overall (None: no limit). Slots are handed out in call order, so
    concurrent callers queue instead of bursting."""

    def __init__(
        self,
        per_endpoint: float | None,
        total: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.per_endpoint = per_endpoint
        self.total = total
        self._clock = clock
        self._sleep = sleep
        self._next: dict[str, float] = {}
        self._next_total = 0.0
        self.waited = 0.0  # seconds callers spent waiting for a slot (metrics, bench)

    def _slot(self, endpoint: str) -> float:
        now = self._clock()
        slot = max(now, self._next.get(endpoint, 0.0), self._next_total)
        if self.per_endpoint:
            self._next[endpoint] = slot + 1.0 / self.per_endpoint
        if self.total:
            self._next_total = slot + 1.0 / self.total
        return slot - now

    async def wait(self, endpoint: str) -> None:
        delay = self._slot(endpoint)
        if delay > 0:
            self.waited += delay
            await self._sleep(delay)

    def back_off(self, endpoint: str, seconds: float) -> None:
        """Stripe said 429: no request to this endpoint for `seconds`, from anyone."""
        until = self._clock() + seconds
        self._next[endpoint] = max(self._next.get(endpoint, 0.0), until)


class PacedHTTPXClient(stripe.HTTPXClient):
    """stripe-python's httpx client, paced, retrying 429s with backoff."""

    def __init__(
        self,
        pacer: Pacer,
        *,
        rate_limit_retries: int = 10,
        backoff_base: float = 0.1,
        backoff_max: float = 16.0,
        timeout: float = 80,
    ) -> None:
        super().__init__(timeout=timeout)
        self.pacer = pacer
        self.rate_limit_retries = rate_limit_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rate_limited = 0  # 429s met (and retried or returned)

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        endpoint = endpoint_of(method, url)
        tries = 0
        while True:
            await self.pacer.wait(endpoint)
            content, status, rheaders = await super().request_async(method, url, headers, post_data)
            if status != 429:
                return content, status, rheaders
            self.rate_limited += 1
            # Stripe-Should-Retry: false means retrying is pointless; answer as is.
            if rheaders.get("stripe-should-retry") == "false" or tries >= self.rate_limit_retries:
                return content, status, rheaders
            tries += 1
            cap = min(self.backoff_base * 2 ** (tries - 1), self.backoff_max)
            delay = cap / 2 + random.uniform(0, cap / 2)
            self.pacer.back_off(endpoint, delay)


def build_client(
    api_key: str,
    base: str,
    *,
    max_rps: float | None,
    max_total_rps: float | None,
    max_network_retries: int = 2,
    timeout: float = 80,
    backoff_base: float = 0.1,
    rate_limit_retries: int = 10,
) -> stripe.StripeClient:
    pacer = Pacer(max_rps, max_total_rps)
    http = PacedHTTPXClient(
        pacer, timeout=timeout, backoff_base=backoff_base, rate_limit_retries=rate_limit_retries
    )
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": base},
        http_client=http,
        # The client retries connection errors, 409 and 5xx itself, same idempotency key.
        max_network_retries=max_network_retries,
    )


def total_rps(settings: Settings) -> float:
    """TOKENS_STRIPE_MAX_TOTAL_RPS, or what the key's mode allows with some room:
    80 a second live (Stripe allows about 100), 20 in test mode (about 25)."""
    if settings.stripe_max_total_rps is not None:
        return settings.stripe_max_total_rps
    key = settings.stripe_api_key or ""
    return 20.0 if "_test_" in key else 80.0


def make_stripe_client(settings: Settings) -> stripe.StripeClient | None:
    """None when no STRIPE_API_KEY is set: bills are still made, and stay unsent."""
    if not settings.stripe_api_key:
        return None
    return build_client(
        settings.stripe_api_key,
        settings.stripe_api_base,
        max_rps=settings.stripe_max_rps,
        max_total_rps=total_rps(settings),
        max_network_retries=settings.stripe_max_network_retries,
        timeout=settings.stripe_timeout_seconds,
    )
