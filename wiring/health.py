"""`tokens check`: is every dependency there and usable? For compose healthchecks."""

from __future__ import annotations

import asyncio

import asyncpg

from db.migrate import pending
from runtime.config import Settings
from wiring.servers import database_url, redis_url


async def _postgres(settings: Settings) -> tuple[str, str]:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(database_url(settings)), 10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"unreachable: {exc}", "unknown"
    try:
        todo = await pending(conn)
    finally:
        await conn.close()
    return "ok", "ok (at head)" if not todo else f"pending: {', '.join(todo)}"


async def _redis(settings: Settings) -> str:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url(settings), socket_timeout=5)
    try:
        await client.ping()
        return "ok"
    except Exception as exc:  # any failure is the answer, not a crash
        return f"unreachable: {exc}"
    finally:
        await client.aclose()


async def _stripe(settings: Settings) -> str:
    from billing.stripe_client import make_stripe_client

    client = make_stripe_client(settings)
    if client is None:
        return "ok (not configured: bills stay unsent)"
    import stripe

    try:
        await client.v1.customers.list_async({"limit": 1})
        return "ok"
    except stripe.AuthenticationError:
        return "refused: STRIPE_API_KEY was not accepted"
    except stripe.StripeError as exc:
        return f"unreachable: {exc.user_message or type(exc).__name__}"


async def run_checks(settings: Settings) -> dict[str, str]:
    pg, migrations = await _postgres(settings)
    return {
        "postgres": pg,
        "migrations": migrations,
        "redis": await _redis(settings),
        "stripe": await _stripe(settings),
    }
