"""Many holds on one team at the same moment, on separate connections, committed."""

from __future__ import annotations

import asyncio

import asyncpg

from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from tests.clock import at
from tests.factories import make_team

T0 = at("2026-03-10T12:00:00")


async def test_200_concurrent_holds_succeed_exactly_floor_n_over_cost(
    ledger: Ledger, database_url: str
) -> None:
    await make_team(ledger, "hot", seats=2, limit=230)  # N = 500 + 230 tokens, cost 10 -> 73 fit
    pool = await asyncpg.create_pool(database_url, min_size=20, max_size=20)
    assert pool is not None
    try:
        racing = Ledger(pool, DEFAULT_CATALOG)
        results = await asyncio.gather(
            *(racing.hold("hot", "enrich", 1, key=f"job:{i}", at=T0) for i in range(200))
        )
    finally:
        await pool.close()
    held = [r for r in results if not r.refused]
    assert len(held) == 73
    assert sum(r.free_tokens for r in held) == 500
    assert sum(r.additional_tokens for r in held) == 230
    section = await ledger.billing("hot", at=T0)
    assert section.free_available == 0 and section.additional_available == 0
    assert section.held == 730


async def test_50_concurrent_holds_with_one_key_make_one_charge(
    ledger: Ledger, database_url: str
) -> None:
    await make_team(ledger, "hot")  # 250 free
    pool = await asyncpg.create_pool(database_url, min_size=20, max_size=20)
    assert pool is not None
    try:
        racing = Ledger(pool, DEFAULT_CATALOG)
        results = await asyncio.gather(
            *(racing.hold("hot", "ai_sequence", 1, key="job:42", at=T0) for _ in range(50))
        )
    finally:
        await pool.close()
    assert len({r.charge_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    section = await ledger.billing("hot", at=T0)
    assert section.held == 50 and len(await ledger.history("hot")) == 1


async def test_concurrent_captures_releases_and_sweep_keep_totals_exact(
    ledger: Ledger, database_url: str
) -> None:
    await make_team(ledger, "hot", seats=4)  # 1,000 free
    holds = [await ledger.hold("hot", "enrich", 1, key=f"k{i}", at=T0) for i in range(60)]
    ids = [h.charge_id for h in holds if h.charge_id is not None]
    pool = await asyncpg.create_pool(database_url, min_size=10, max_size=10)
    assert pool is not None
    try:
        racing = Ledger(pool, DEFAULT_CATALOG)
        jobs = []
        for n, cid in enumerate(ids):
            # Every charge is settled twice at once, in a fixed mix of ways.
            first = racing.capture if n % 3 else racing.release
            jobs += [first(cid, at=T0), first(cid, at=T0)]
        jobs.append(racing.expire_holds(older_than=at("2026-03-11"), at=T0))
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        await pool.close()
    # The sweep may win some charges first; the settlements then fail cleanly.
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert all("already expired" in str(e) for e in errors), errors
    history = await ledger.history("hot")
    assert all(c.state != "held" for c in history)
    section = await ledger.billing("hot", at=T0)
    captured = sum(c.tokens for c in history if c.state == "captured")
    assert section.free_spent == captured and section.held == 0
