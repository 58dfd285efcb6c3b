"""A team's lock and its month's lock, taken in opposite orders, never deadlock.

Whoever locks a team row (opening a month, a team set, a webhook, a limit or
cap change) takes it before the team's month. A call of tokens_apply that
writes a month row twice in its transaction (settlements and holds in one
batch; a hold and then its capture in one transaction) also reaches the team
row after the month's: Postgres' foreign-key check on billing_months.team_id,
which it cannot skip for a row version its own transaction wrote, takes FOR
KEY SHARE on the team. A team lock that conflicted with that would close a
cycle: e.g. two workers' first holds, one opening the month while the other
waits for the team's lock, then finds the month open and queues for it behind
the first worker's next batch, which checks the team.

Each test forces that interleaving with a third connection holding the month
row: the month writer queues for it first, then the team locker takes its
team and queues behind; the month is let go, and both must commit.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from billing.webhooks import q as webhook_q
from db.queries import q
from ledger.service import Ledger
from tests.clock import at
from tests.factories import make_team

T0 = at("2026-03-10T12:00:00")
MONTH = at("2026-03-01")
NEXT_MONTH_AT = at("2026-04-10T12:00:00")
# A hang guard only: a wait that works ends in milliseconds.
GUARD_S = 30

Step = Callable[[asyncpg.Connection], Awaitable[Any]]


def hold_args(holds: list[tuple[str, datetime]]) -> list[Any]:
    """tokens_apply's arguments for holds of one token on acme (no settlement)."""
    n = len(holds)
    return [
        [], [], [],
        ["acme"] * n, [k for k, _ in holds], ["debounce"] * n, [1] * n, [1] * n,
        [t for _, t in holds], [None] * n, [None] * n, [None] * n,
    ]  # fmt: skip


async def settle_and_hold(conn: asyncpg.Connection, charge: int) -> list[Any]:
    """One group-commit batch: a capture and a hold of one team (its month row is
    written twice: by the settlement, then by the hold)."""
    args = hold_args([("b-hold", T0)])
    args[0:3] = [[charge], ["captured"], [T0]]
    return await conn.fetch(q("apply"), *args)


async def hold_then_capture(conn: asyncpg.Connection, _charge: int) -> list[Any]:
    """Ledger.charge's shape: a hold, then its capture, in one transaction."""
    async with conn.transaction():
        (held,) = await conn.fetch(q("apply"), *hold_args([("b-charge", T0)]))
        assert held["state"] == "held"
        args = hold_args([])
        args[0:3] = [[held["charge_id"]], ["captured"], [T0]]
        return await conn.fetch(q("apply"), *args)


async def holds_opening_a_month(conn: asyncpg.Connection) -> Any:
    """A batch whose second hold opens the next month (the team's lock), then locks
    both months."""
    return await conn.fetch(q("apply"), *hold_args([("a-this", T0), ("a-next", NEXT_MONTH_AT)]))


async def team_set(conn: asyncpg.Connection) -> Any:
    """A seat change: the team's lock, then its month's (the grant grows)."""
    return await conn.fetchrow(
        "SELECT * FROM tokens_set_team('acme', 'email_outreach', 3, 'month', $1, NULL, $2)",
        at("2026-01-01"),
        T0,
    )


async def webhook_then_team_set(conn: asyncpg.Connection) -> Any:
    """A subscription webhook: the team's lock (team_subscription), then a team set."""
    async with conn.transaction():
        await conn.fetchrow(webhook_q("team_subscription"), "acme")
        return await team_set(conn)


async def wait_until_blocked(admin: asyncpg.Connection, pid: int) -> None:
    """Until the backend `pid` waits for a lock (a barrier, not a delay)."""
    query = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
    async with asyncio.timeout(GUARD_S):
        # Postgres signals no waiter: pg_stat_activity is polled.
        while not await admin.fetchval(query, pid):  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("writer", [settle_and_hold, hold_then_capture])
@pytest.mark.parametrize("team_locker", [holds_opening_a_month, team_set, webhook_then_team_set])
async def test_a_team_locker_and_a_month_writer_both_commit(
    ledger: Ledger,
    database_url: str,
    writer: Callable[[asyncpg.Connection, int], Awaitable[list[Any]]],
    team_locker: Step,
) -> None:
    await make_team(ledger, "acme", limit=100)
    held = await ledger.hold("acme", "debounce", 1, key="x", at=T0)  # opens March
    assert held.charge_id is not None
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    admin, month_holder, conn_w, conn_t = conns
    try:
        async with month_holder.transaction():
            await month_holder.execute(
                "SELECT 1 FROM billing_months WHERE team_id = 'acme' AND period_start = $1"
                " FOR NO KEY UPDATE",
                MONTH,
            )
            writing = asyncio.ensure_future(writer(conn_w, held.charge_id))
            await wait_until_blocked(admin, conn_w.get_server_pid())
            locking = asyncio.ensure_future(team_locker(conn_t))
            await wait_until_blocked(admin, conn_t.get_server_pid())
        async with asyncio.timeout(GUARD_S):
            written, locked = await asyncio.gather(writing, locking, return_exceptions=True)
    finally:
        for c in conns:
            await c.close()
    assert not isinstance(written, BaseException), written
    assert not isinstance(locked, BaseException), locked
    assert all(r["err_code"] is None for r in written)
    assert [r["state"] for r in written] == (
        ["captured", "held"] if writer is settle_and_hold else ["captured"]
    )
    # Both sides took effect, and the month's totals are its charges'.
    charges = {c.idempotency_key: c for c in await ledger.history("acme")}
    if writer is settle_and_hold:
        expected = {"x": "captured", "b-hold": "held"}
    else:
        expected = {"x": "held", "b-charge": "captured"}
    if team_locker is holds_opening_a_month:
        expected |= {"a-this": "held", "a-next": "held"}
    assert {k: c.state for k, c in charges.items()} == expected
    section = await ledger.billing("acme", at=T0)
    assert section.free_held + section.free_spent == len(
        [c for c in charges.values() if c.period_start == MONTH and c.state != "released"]
    )
    if team_locker is not holds_opening_a_month:
        assert section.seats == 3
        assert section.free_granted == 3 * 250


def test_no_statement_locks_a_team_for_update() -> None:
    """One FOR UPDATE on a team row anywhere is enough for the cycle above (it is
    the only row lock that blocks FOR KEY SHARE): every team lock of the SQL files
    is FOR NO KEY UPDATE."""
    root = Path(__file__).resolve().parents[2]
    files = sorted([*root.glob("ledger/sql/*.sql"), *root.glob("billing/sql/*.sql")])
    modes: list[tuple[str, str]] = []
    for path in files:
        # Statements end at a semicolon, or at the next name of a query file.
        text = re.sub(r"^-- [a-z_]+ --$", ";", path.read_text(), flags=re.M)
        for statement in re.sub(r"--[^\n]*", "", text).split(";"):
            if re.search(r"\bFROM\s+teams\b", statement, re.I):
                for mode in re.findall(r"\bFOR\s+(NO\s+KEY\s+UPDATE|UPDATE)\b", statement, re.I):
                    modes.append((path.name, " ".join(mode.upper().split())))
    assert len(modes) >= 4  # open_month, set_team, lock_team, team_subscription
    assert [m for m in modes if m[1] != "NO KEY UPDATE"] == []
