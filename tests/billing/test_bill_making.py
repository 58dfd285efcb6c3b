"""Making bills at a month's end: the work grows with the charges billed, not their square."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from ledger.service import Ledger

START = datetime(2001, 1, 1, tzinfo=UTC)
END = datetime(2001, 2, 1, tzinfo=UTC)
AFTER = datetime(2001, 2, 1, 0, 5, tzinfo=UTC)
TEAMS = 40
CHARGES = 25  # captured charges with additional tokens, per team


async def _ended_months(pool: asyncpg.Pool) -> None:
    """TEAMS teams, each with an ended month of CHARGES captured additional charges."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO teams (id, plan, seats, billing_interval, anchor, additional_limit,
                               created_at, updated_at)
            SELECT 'bm-' || g, 'email_outreach', 1, 'month', $1, 1000000, $1, $1
              FROM generate_series(1, $2::int) g
            """,
            START,
            TEAMS,
        )
        await conn.execute(
            """
            INSERT INTO billing_months (team_id, period_start, period_end, free_granted,
                                        additional_spent, unit_price, currency)
            SELECT 'bm-' || g, $1, $2, 0, $3::int, 0.01, 'usd' FROM generate_series(1, $4::int) g
            """,
            START,
            END,
            CHARGES,
            TEAMS,
        )
        await conn.execute(
            """
            INSERT INTO charges (team_id, period_start, idempotency_key, action, quantity,
                                 tokens, free_tokens, additional_tokens, state, held_at,
                                 settled_at)
            SELECT 'bm-' || g, $1, 'k' || c, 'debounce', 1, 1, 0, 1, 'captured', $1, $1
              FROM generate_series(1, $2::int) g, generate_series(1, $3::int) c
            """,
            START,
            TEAMS,
            CHARGES,
        )


async def test_a_month_end_pass_reads_no_link_of_another_bill(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    """One `tokens_create_bills` call bills every team, in one transaction, so the
    links of the bills made earlier in the call are already in bill_charges. A plan
    made while bill_charges was small read all of them again for every bill (the
    anti-join scanned the table, materialised, against each charge): quadratic in the
    teams, hours at a month's end with 1,000 teams of 1,000 charges. Each charge's
    link is now found or not by the table's primary key, so making these bills reads
    no bill_charges row at all, whatever plan the session holds."""
    await _ended_months(pool)
    # As on a new deployment before its first month's end: bill_charges analyzed
    # while empty, so a plan made now takes it for a table of no rows.
    await pool.execute("ANALYZE bill_charges")
    async with pool.acquire() as conn, conn.transaction():
        bills = await conn.fetch("SELECT * FROM tokens_create_bills(NULL, $1)", AFTER)
        read = await conn.fetchval(
            "SELECT pg_stat_get_xact_tuples_returned('bill_charges'::regclass)"
            " + pg_stat_get_xact_tuples_fetched('bill_charges'::regclass)"
        )
    assert len(bills) == TEAMS
    assert {(b["reason"], b["tokens"]) for b in bills} == {("month_end", CHARGES)}
    linked = await pool.fetch(
        "SELECT b.team_id, count(*) AS n FROM bill_charges bc JOIN bills b ON b.id = bc.bill_id"
        " GROUP BY b.team_id"
    )
    assert sorted(r["n"] for r in linked) == [CHARGES] * TEAMS
    assert read == 0


async def test_a_second_bill_of_a_month_links_only_the_charges_not_billed_yet(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    """A threshold bill, then more captures, then the month-end bill: each charge is
    linked to exactly one bill, the first one that billed it."""
    await _ended_months(pool)
    async with pool.acquire() as conn, conn.transaction():
        # The month billed up to now as if by an earlier threshold bill.
        first = await conn.fetch("SELECT * FROM tokens_create_bills('bm-1', $1)", AFTER)
        await conn.execute(
            """
            INSERT INTO charges (team_id, period_start, idempotency_key, action, quantity,
                                 tokens, free_tokens, additional_tokens, state, held_at,
                                 settled_at)
            VALUES ('bm-1', $1, 'late', 'debounce', 1, 3, 0, 3, 'captured', $1, $1)
            """,
            START,
        )
        await conn.execute(
            "UPDATE billing_months SET additional_spent = additional_spent + 3, closed_at = NULL"
            " WHERE team_id = 'bm-1'"
        )
        second = await conn.fetch("SELECT * FROM tokens_create_bills('bm-1', $1)", AFTER)
    assert [b["tokens"] for b in first] == [CHARGES]
    assert [b["tokens"] for b in second] == [3]
    links = await pool.fetch(
        "SELECT c.idempotency_key, bc.bill_id FROM bill_charges bc"
        " JOIN charges c ON c.id = bc.charge_id WHERE c.team_id = 'bm-1'"
    )
    by_bill: dict[int, list[str]] = {}
    for r in links:
        by_bill.setdefault(r["bill_id"], []).append(r["idempotency_key"])
    assert set(by_bill) == {first[0]["id"], second[0]["id"]}
    assert by_bill[second[0]["id"]] == ["late"]
    assert sorted(by_bill[first[0]["id"]]) == sorted(f"k{c}" for c in range(1, CHARGES + 1))


async def test_month_end_bill_making_has_its_own_deadline(
    ledger: Ledger, database_url: str
) -> None:
    """Bill-making over every team may outlast a request's statement deadline (many teams,
    or a month row another session holds): it runs under its own, longer one."""
    from billing.reconcile import create_bills
    from db.pool import create_pool
    from tests.faults import MonthLock

    short = await create_pool(database_url, max_size=4, statement_timeout=0.3)
    try:
        await _ended_months(short)
        lock = MonthLock(short, "bm-1")
        await lock.take()
        lock.later(lambda: asyncio.sleep(1.0), lock.commit)  # held past the 0.3 s deadline
        try:
            bills = await create_bills(short, team=None, at=AFTER)
        finally:
            await lock.close()
        assert len(bills) == TEAMS
        # A request's statement on the same pool still has the short deadline.
        with pytest.raises(asyncpg.QueryCanceledError):
            await short.execute("SELECT pg_sleep(1)")
    finally:
        await short.close()
