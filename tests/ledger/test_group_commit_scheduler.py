"""Group commit's scheduler: how many batches, which items in which, and who gets answered.

These would fail on a scheduler that puts one team in two batches at once,
that never uses more than one connection for many teams, that reorders a hot
team's holds, or that loses or doubles an answer when callers are cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import asyncpg
import pytest

from ledger.catalog import DEFAULT_CATALOG
from ledger.group_commit import Batch, GroupCommit, HoldItem
from ledger.results import HoldResult
from ledger.service import Ledger
from tests.clock import at
from tests.factories import make_team

T0 = at("2026-03-10T12:00:00")
# A hang guard only (a broken scheduler would wait forever): never reached when it works.
GUARD_S = 60


def _spy_on_batches(
    group: GroupCommit, team_of_charge: dict[int, str]
) -> tuple[list[set[str]], list[set[str]]]:
    """As each batch starts: its teams (a settlement's: its charge's real team), and
    those of them in a batch still in flight. Returns both lists."""
    in_flight: list[set[str]] = []
    seen: list[set[str]] = []
    shared: list[set[str]] = []
    commit = group._commit

    async def spied(batch: Batch) -> None:
        teams = {
            w.item.team if isinstance(w.item, HoldItem) else team_of_charge[w.item.charge_id]
            for w in batch
        }
        shared.extend(teams & other for other in in_flight if teams & other)
        in_flight.append(teams)
        seen.append(teams)
        try:
            await commit(batch)
        finally:
            in_flight.remove(teams)

    group._commit = spied  # type: ignore[method-assign]
    return seen, shared


async def test_a_team_is_never_in_two_batches_at_once(ledger: Ledger) -> None:
    teams = [f"t{n}" for n in range(6)]
    for t in teams:
        await make_team(ledger, t, seats=40)
    ledger.group = GroupCommit(ledger.pool, min_batch=4)  # several small batches
    team_of_charge: dict[int, str] = {}
    seen, shared = _spy_on_batches(ledger.group, team_of_charge)

    async def caller(n: int) -> None:
        for i in range(6):
            team = teams[(n + i) % len(teams)]
            held = await ledger.hold(team, "enrich", 1, key=f"c{n}-{i}", at=T0)
            assert held.charge_id is not None
            team_of_charge[held.charge_id] = team
            settle = ledger.capture if i % 2 else ledger.release
            assert (await settle(held.charge_id, at=T0)).changed

    await asyncio.wait_for(asyncio.gather(*(caller(n) for n in range(16))), GUARD_S)
    assert shared == []  # no team was in two batches at once
    assert ledger.group.most_inflight > 1  # several batches did commit at once
    assert ledger.group.retried_alone == 0
    assert sum(len(s) for s in seen) > len(seen)  # and batches did carry several teams
    section = await ledger.billing("t0", at=T0)
    assert section.held == 0


async def test_callers_on_many_teams_commit_on_several_connections_at_once(
    ledger: Ledger,
) -> None:
    """8 callers on 8 teams, batches of at least 2: 4 batches on 4 connections at
    once. One team's month row is locked elsewhere: its batch waits, the others
    commit meanwhile."""
    teams = [f"t{n}" for n in range(8)]
    for t in teams:
        await make_team(ledger, t)
        await ledger.hold(t, "enrich", 1, key="first", at=T0)  # the month exists
    ledger.group = GroupCommit(ledger.pool, min_batch=2, max_inflight=4)
    async with ledger.pool.acquire() as blocker:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM billing_months WHERE team_id = 't0' FOR UPDATE")
        calls = {
            t: asyncio.ensure_future(ledger.hold(t, "enrich", 1, key="k", at=T0)) for t in teams
        }
        done: set[asyncio.Future[HoldResult]] = set()
        pending = set(calls.values())
        while len(done) < 6:  # all but t0's batch (two teams)
            new, pending = await asyncio.wait(
                pending, timeout=GUARD_S, return_when=asyncio.FIRST_COMPLETED
            )
            assert new, "the other teams' batches waited for t0's"
            done |= new
        assert calls["t0"] in pending and len(pending) == 2
        assert ledger.group.most_inflight == 4
        await tx.commit()
    held = await asyncio.wait_for(asyncio.gather(*calls.values()), GUARD_S)
    assert all(h.state == "held" for h in held)
    assert ledger.group.batches == 4


async def test_the_default_keeps_two_batches_of_16_or_more_in_flight(ledger: Ledger) -> None:
    """min_batch 16, two in flight: 31 callers on 31 teams go as one batch, 32 as
    two of 16, and 128 as two of 64, never more than two at once."""
    teams = [f"t{n:03d}" for n in range(128)]
    for t in teams:
        await make_team(ledger, t)
    group = ledger.group
    assert ledger.pool.get_max_size() > 2  # the cap is the default's, not the pool's
    sizes: list[int] = []
    commit = group._commit

    async def spied(batch: Batch) -> None:
        sizes.append(len(batch))
        await commit(batch)

    group._commit = spied  # type: ignore[method-assign]
    await asyncio.gather(*(ledger.hold(t, "enrich", 1, key="a", at=T0) for t in teams[:31]))
    assert (sizes, group.most_inflight) == ([31], 1)
    await asyncio.gather(*(ledger.hold(t, "enrich", 1, key="b", at=T0) for t in teams[:32]))
    assert (sizes[1:], group.most_inflight) == ([16, 16], 2)
    await asyncio.gather(*(ledger.hold(t, "enrich", 1, key="c", at=T0) for t in teams))
    assert (sizes[3:], group.most_inflight) == ([64, 64], 2)


async def test_a_hot_team_holds_in_arrival_order_and_refuses_exactly(ledger: Ledger) -> None:
    """250 free tokens, no additional: 25 holds of 10 fit. The first goes alone; the
    39 that arrive meanwhile wait for its commit (same team), then go together, in
    the order they arrived: the first 24 of them fit, the other 15 are refused."""
    await make_team(ledger, "hot")
    first = asyncio.ensure_future(ledger.hold("hot", "enrich", 1, key="k00", at=T0))
    await asyncio.sleep(0)  # turn 1: queued
    await asyncio.sleep(0)  # turn 2: its batch is formed and on its way
    rest = asyncio.gather(
        *(ledger.hold("hot", "enrich", 1, key=f"k{n:02d}", at=T0) for n in range(1, 40))
    )
    held = [await first, *await rest]
    assert [h.state for h in held] == ["held"] * 25 + ["refused"] * 15
    assert [h.free_available for h in held[:25]] == list(range(240, -10, -10))
    assert all(h.free_available == 0 and h.charge_id is None for h in held[25:])
    assert (ledger.group.batches, ledger.group.most_inflight) == (2, 1)
    assert (await ledger.billing("hot", at=T0)).free_held == 250


async def test_every_item_is_answered_once_when_callers_are_cancelled(ledger: Ledger) -> None:
    """Callers cancelled before their batch formed, or while it commits: their items
    still commit (a reply lost on the wire); everyone else gets their own answer;
    nothing is left waiting or in flight."""
    teams = [f"t{n}" for n in range(4)]
    for t in teams:
        await make_team(ledger, t, seats=40)
    ledger.group = GroupCommit(ledger.pool, min_batch=4)

    def hold(n: int) -> asyncio.Future[HoldResult]:
        return asyncio.ensure_future(
            ledger.hold(teams[n % len(teams)], "enrich", 1, key=f"k{n}", at=T0)
        )

    calls = [hold(n) for n in range(60)]
    await asyncio.sleep(0)  # every hold is queued, nothing formed yet
    for c in calls[0::3]:
        c.cancel()
    await asyncio.sleep(0)  # batches formed and on their way
    for c in calls[1::3]:
        c.cancel()
    more = [hold(n) for n in range(60, 80)]  # and callers keep coming
    outcomes = await asyncio.wait_for(
        asyncio.gather(*calls, *more, return_exceptions=True), GUARD_S
    )
    answered = {o.key: o.charge_id for o in outcomes if isinstance(o, HoldResult)}
    cancelled = [o for o in outcomes if isinstance(o, asyncio.CancelledError)]
    assert len(answered) == 40 and len(cancelled) == 40
    assert all(o.state == "held" and not o.replayed for o in outcomes if isinstance(o, HoldResult))
    group = ledger.group
    assert (group._queue, group._inflight, group._busy) == ([], 0, set())
    assert group.items == 80  # each item went once
    # Every item committed once, cancelled callers' included: each key has one charge.
    again = await asyncio.gather(*(hold(n) for n in range(80)))
    assert all(h.replayed for h in again)
    assert all(answered[h.key] == h.charge_id for h in again if h.key in answered)
    count = await ledger.pool.fetchval("SELECT count(*) FROM charges")
    assert count == 80


async def test_settlements_of_one_team_and_holds_of_another_never_deadlock(
    ledger: Ledger, database_url: str
) -> None:
    """Two 'processes' at once, each batching settlements of one team's charges
    (held by the other process: it does not know their team, so they may join any
    batch) with holds of the other team, and the other way round. A deadlock would
    fail a batch, which is then retried item by item: none is, and Postgres counts
    no deadlock."""
    for t in ("a", "b"):
        await make_team(ledger, t, seats=40)
    pools = [await asyncpg.create_pool(database_url, min_size=2, max_size=4) for _ in range(2)]
    try:
        one, two = (Ledger(p, DEFAULT_CATALOG) for p in pools)
        deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        before = await ledger.pool.fetchval(deadlocks)
        for rnd in range(8):
            held_a = await asyncio.gather(
                *(two.hold("a", "enrich", 1, key=f"a{rnd}-{i}", at=T0) for i in range(12))
            )
            held_b = await asyncio.gather(
                *(one.hold("b", "enrich", 1, key=f"b{rnd}-{i}", at=T0) for i in range(12))
            )
            work: list[Awaitable[Any]] = []
            for i in range(12):  # one: settles a's charges, holds b; two: the mirror
                work.append(one.capture(held_a[i].charge_id or 0, at=T0))
                work.append(one.hold("b", "enrich", 1, key=f"b{rnd}-new{i}", at=T0))
                work.append(two.capture(held_b[i].charge_id or 0, at=T0))
                work.append(two.hold("a", "enrich", 1, key=f"a{rnd}-new{i}", at=T0))
            await asyncio.wait_for(asyncio.gather(*work), GUARD_S)
        assert (one.group.retried_alone, two.group.retried_alone) == (0, 0)
        assert await ledger.pool.fetchval(deadlocks) == before
    finally:
        for p in pools:
            await p.close()


@pytest.mark.parametrize("group_commit", [True, False])
async def test_one_commit_per_call_sends_every_call_at_once(
    ledger: Ledger, group_commit: bool
) -> None:
    """Ledger(group_commit=False), the benchmarks' comparison: 12 calls, 12
    transactions, all sent at once, even on one team."""
    await make_team(ledger, "t")
    led = Ledger(ledger.pool, DEFAULT_CATALOG, group_commit=group_commit)
    held = await asyncio.gather(
        *(led.hold("t", "enrich", 1, key=f"k{i}", at=T0) for i in range(12))
    )
    assert all(h.state == "held" for h in held)
    expected = (1, 1) if group_commit else (12, 12)
    assert (led.group.batches, led.group.most_inflight) == expected
