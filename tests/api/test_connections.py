"""Connections and deadlines: no request holds a pooled connection while it waits for
another, and a busy pool or a slow statement is a 503 with Retry-After, never a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis

from api.app import create_app
from db.pool import create_pool
from ledger.service import Ledger
from testing.stripe import StripeFake
from tests.api.test_api_webhooks import CATALOG, MAR_1, deliver, event
from tests.api_helpers import NOW, arq_redis, bearer, services_for, settings_for
from tests.clock import FrozenClock, at
from tests.factories import make_team

__all__ = ["arq_redis"]

BURST = 50


async def small_ledger(database_url: str, **timeouts: float) -> tuple[asyncpg.Pool, Ledger]:
    pool = await create_pool(database_url, min_size=1, max_size=5, **timeouts)
    ledger = Ledger(pool, CATALOG)
    await ledger.sync_catalog()
    return pool, ledger


async def close(pool: asyncpg.Pool) -> None:
    """Close the pool; a connection never given back (the failure under test) must not
    hang the suite: the pool is then terminated."""
    try:
        await asyncio.wait_for(pool.close(), 10)
    except TimeoutError:
        pool.terminate()


@pytest.fixture
async def five(database_url: str) -> AsyncIterator[Ledger]:
    """A ledger on a pool of 5 connections, with the default deadlines."""
    pool, ledger = await small_ledger(database_url)
    yield ledger
    await close(pool)


def api(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str, **kw: object
) -> httpx.AsyncClient:
    svc = services_for(ledger, redis, settings_for(database_url, redis_url), **kw)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(svc.settings, svc)),
        base_url="http://testserver",
    )


async def test_a_burst_of_webhooks_on_a_small_pool_all_finish_and_the_api_answers(
    five: Ledger, arq_redis: ArqRedis, stripe_fake: StripeFake, database_url: str, redis_url: str
) -> None:
    await make_team(five, "reader", seats=2, at=NOW)
    stripe_fake.latency = 0.3  # Stripe's round trip, for every read of an event's object
    cus = stripe_fake.add_customer()
    subs = [
        stripe_fake.add_subscription(
            cus, team=f"team-{n}", price="price_eo_m", quantity=2, anchor=MAR_1
        )
        for n in range(BURST - 5)
    ]
    events = [event("customer.subscription.created", sub) for sub in subs]
    events += [events[0]] * 5  # Stripe delivers one of them five times at once
    # As many deliveries as the pool has connections stall at Stripe for a while.
    stalled = range(1, 6)
    holds = [stripe_fake.hold_next(f"GET /v1/subscriptions/{subs[n]['id']}") for n in stalled]
    clock = FrozenClock(at("2026-03-10T12:00:00"))
    async with api(
        five, arq_redis, database_url, redis_url, clock=clock, stripe=stripe_fake.client()
    ) as c:
        started = time.monotonic()
        burst = [asyncio.create_task(deliver(c, e)) for e in events]
        await asyncio.wait_for(asyncio.gather(*(h.arrived.wait() for h in holds)), 10)
        # While they wait for Stripe, every other delivery finishes, and the API answers.
        billing = await asyncio.wait_for(
            c.get("/v1/teams/reader/billing", headers=bearer("member", "reader")), 5
        )
        assert billing.status_code == 200, billing.text
        others = [t for n, t in enumerate(burst) if n not in stalled]
        await asyncio.wait_for(asyncio.gather(*others), 30)
        assert not any(burst[n].done() for n in stalled)
        for hold in holds:
            hold.release()
        done = await asyncio.wait_for(asyncio.gather(*burst), 30)
        elapsed = time.monotonic() - started
    assert [r.status_code for r in done] == [200] * BURST, [
        r.text for r in done if r.status_code != 200
    ]
    assert [r.json()["duplicate"] for r in done].count(False) == BURST - 5
    assert elapsed < 15
    handled = await five.pool.fetchval(
        "SELECT count(*) FROM stripe_events WHERE handled_at IS NOT NULL"
    )
    assert handled == BURST - 5
    for n in (0, 1, BURST - 6):
        team = await five.get_team(f"team-{n}")
        assert (team.plan, team.seats, team.stripe_subscription) == (
            "email_outreach", 2, subs[n]["id"],
        )  # fmt: skip


async def test_an_exhausted_pool_is_a_503_with_retry_after_quickly(
    arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    pool, ledger = await small_ledger(database_url, acquire_timeout=0.5)
    try:
        await make_team(ledger, "acme", seats=2, at=NOW)
        async with api(ledger, arq_redis, database_url, redis_url) as c:
            held = [await pool.acquire() for _ in range(5)]  # every connection is busy
            try:
                started = time.monotonic()
                response = await asyncio.wait_for(
                    c.get("/v1/teams/acme/billing", headers=bearer("member")), 10
                )
                waited = time.monotonic() - started
                hook = await asyncio.wait_for(
                    deliver(c, event("customer.subscription.created", {"id": "sub_x"})), 10
                )
            finally:
                for conn in held:
                    await pool.release(conn)
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"].isdigit()
            assert response.json()["error"]["code"] == "unavailable"
            assert waited < 3
            assert hook.status_code == 503 and "Retry-After" in hook.headers
            # Stored nothing: Stripe delivers it again.
            assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0
            again = await c.get("/v1/teams/acme/billing", headers=bearer("member"))
            assert again.status_code == 200
    finally:
        await close(pool)


async def test_a_statement_past_its_deadline_is_a_503_and_changes_nothing(
    arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    pool, ledger = await small_ledger(database_url, statement_timeout=0.3)
    try:
        await make_team(ledger, "acme", seats=2, at=NOW)
        async with api(ledger, arq_redis, database_url, redis_url) as c:
            blocker = await asyncpg.connect(database_url)
            try:
                async with blocker.transaction():
                    # Bill-making (or any long transaction) holds the team's row meanwhile.
                    await blocker.execute("SELECT 1 FROM teams WHERE id = 'acme' FOR UPDATE")
                    body = {
                        "plan": "email_outreach",
                        "seats": 5,
                        "interval": "month",
                        "anchor": "2026-01-01",
                    }
                    started = time.monotonic()
                    response = await asyncio.wait_for(
                        c.put("/v1/teams/acme", json=body, headers=bearer("service", None)), 10
                    )
                    waited = time.monotonic() - started
            finally:
                await blocker.close()
            assert response.status_code == 503, response.text
            assert "Retry-After" in response.headers
            assert waited < 3
            assert (await ledger.get_team("acme")).seats == 2
    finally:
        await close(pool)
