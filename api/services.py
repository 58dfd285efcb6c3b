"""What the routes use, as one object built at start-up (api/app.py) and read per request.

Its own module so that the routes and their dependencies (deps.py) can name it
without importing the app, which imports every route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import stripe
from arq.connections import ArqRedis
from fastapi import Request

from ledger.service import Ledger
from runtime.config import Settings


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    """Built once per process and passed down (no globals)."""

    settings: Settings
    ledger: Ledger
    redis: ArqRedis
    stripe: stripe.StripeClient | None
    app_secret: str
    webhook_secret: str | None
    clock: Callable[[], datetime] = utc_now


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
