"""Fixtures and helpers of the HTTP API tests: tokens, the app on the test database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from api.app import create_app
from api.services import Services
from ledger.service import Ledger
from runtime.config import Settings
from tests.clock import at

SECRET = "tokens-test-app-secret-0123456789abcdef"
WEBHOOK_SECRET = "whsec_test_secret_0123456789"
NOW = at("2026-03-10T12:00:00")
ANCHOR = at("2026-01-01")


def token(
    role: str,
    team: str | None = "acme",
    sub: str = "ann",
    *,
    exp_in: int = 3600,
    secret: str = SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    body: dict[str, Any] = {"sub": sub, "role": role, "exp": int(time.time()) + exp_in, **claims}
    if team is not None:
        body["team"] = team
    return jwt.encode(body, secret, algorithm=algorithm)


def bearer(role: str, team: str | None = "acme", **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role, team, **kw)}"}


def settings_for(database_url: str, redis_url: str, **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        app_secret=SECRET,
        stripe_webhook_secret=WEBHOOK_SECRET,  # type: ignore[call-arg]
        **extra,
    )


@pytest.fixture
async def arq_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    await pool.flushdb()
    yield pool
    await pool.aclose()


def services_for(
    ledger: Ledger, redis: ArqRedis, settings: Settings, *, clock: Any = None, stripe: Any = None
) -> Services:
    return Services(
        settings=settings,
        ledger=ledger,
        redis=redis,
        stripe=stripe,
        app_secret=SECRET,
        webhook_secret=WEBHOOK_SECRET,
        clock=clock or (lambda: NOW),
    )


@pytest.fixture
def api_services(
    ledger: Ledger, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> Services:
    return services_for(ledger, arq_redis, settings_for(database_url, redis_url))


@pytest.fixture
async def client(api_services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_services.settings, api_services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
