"""The teams a reconcile benchmark bills: made in bulk, checked, removed.

Every team has one ended billing month with unbilled additional tokens, so a
run makes one `month_end` bill per team. Teams, months and captured charges
are written with bulk SQL (`generate_series`), consistent with each other, so
`Ledger.drift()` stays empty.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from testing.stripe import StripeFake

# A billing month long past, so that no team of the other benchmarks (2025) is
# due in these runs, and these teams are due in no other run.
PERIOD_START = datetime(2001, 1, 1, tzinfo=UTC)
PERIOD_END = datetime(2001, 2, 1, tzinfo=UTC)
RECONCILE_AT = datetime(2001, 2, 1, 0, 5, tzinfo=UTC)
PLAN = "email_outreach"
SEATS = 2
# Additional tokens per team: USD 10, below the USD 50 threshold, so each team gets
# one month_end bill; a multiple of every charges-per-team count used.
UNBILLED = 1_000


async def setup(pool: asyncpg.Pool, prefix: str, teams: int, charges_per_team: int) -> None:
    """Teams, one ended month each, and captured charges adding up to its totals."""
    plan = DEFAULT_CATALOG.plan(PLAN)
    free = plan.free_tokens * (SEATS if plan.per_seat else 1)
    ids = f"$1 || lpad(g::text, {len(str(teams))}, '0')"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f"""
            INSERT INTO teams (id, plan, seats, billing_interval, anchor, stripe_customer,
                               additional_limit, created_at, updated_at)
            SELECT {ids}, $2, $3, 'month', $4, 'cus_' || {ids}, 1000000, $4, $4
            FROM generate_series(1, $5::int) AS g
            """,
            prefix,
            PLAN,
            SEATS,
            PERIOD_START,
            teams,
        )
        await conn.execute(
            f"""
            INSERT INTO billing_months (team_id, period_start, period_end, free_granted,
                                        free_spent, additional_spent, unit_price, currency)
            SELECT {ids}, $2, $3, $4, $4, $5, 0.01, 'usd'
            FROM generate_series(1, $6::int) AS g
            """,
            prefix,
            PERIOD_START,
            PERIOD_END,
            free,
            UNBILLED,
            teams,
        )
        # Charge 1 also spends the month's free tokens; the additional tokens are
        # spread evenly over the charges (UNBILLED is a multiple of charges_per_team).
        per = UNBILLED // charges_per_team
        await conn.execute(
            f"""
            INSERT INTO charges (team_id, period_start, idempotency_key, action, quantity,
                                 tokens, free_tokens, additional_tokens, state, held_at,
                                 settled_at)
            SELECT {ids}, $2, 'bench-' || c, 'debounce', t.tokens, t.tokens, t.free, $3,
                   'captured', $4, $4
            FROM generate_series(1, $5::int) AS g,
                 generate_series(1, $6::int) AS c,
                 LATERAL (SELECT CASE WHEN c = 1 THEN $7::bigint ELSE 0 END AS free,
                                 CASE WHEN c = 1 THEN $7::bigint ELSE 0 END + $3 AS tokens) t
            """,
            prefix,
            PERIOD_START,
            per,
            PERIOD_START + (PERIOD_END - PERIOD_START) / 2,
            teams,
            charges_per_team,
            free,
            timeout=600,
        )
    await pool.execute("ANALYZE teams, billing_months, charges, bills")


async def cleanup(pool: asyncpg.Pool, prefix: str) -> None:
    like = prefix + "%"
    async with pool.acquire() as conn, conn.transaction():
        # Deleting a scenario's 100,000 charges outlasts the product's statement deadline.
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.execute(
            "DELETE FROM bill_charges bc USING bills b WHERE b.id = bc.bill_id"
            " AND b.team_id LIKE $1",
            like,
            timeout=600,
        )
        for table in ("bills", "charges", "billing_months"):
            await conn.execute(f"DELETE FROM {table} WHERE team_id LIKE $1", like, timeout=600)
        await conn.execute("DELETE FROM teams WHERE id LIKE $1", like, timeout=600)


async def check(
    pool: asyncpg.Pool, ledger: Ledger, fake: StripeFake, prefix: str, teams: int
) -> dict[str, Any]:
    """One bill per team, paid; one paid invoice per team at the fake, nothing else."""
    like = prefix + "%"
    bills = await pool.fetchrow(
        """
        SELECT count(*) AS bills, count(*) FILTER (WHERE step = 'paid') AS paid
        FROM bills WHERE team_id LIKE $1
        """,
        like,
    )
    assert bills is not None
    # Teams without exactly one bill, a paid month_end bill for their unbilled tokens.
    not_billed_once = await pool.fetchval(
        """
        SELECT count(*) FROM teams t
        WHERE t.id LIKE $1
          AND (SELECT count(*) FILTER (WHERE b.step = 'paid' AND b.reason = 'month_end'
                                         AND b.tokens = $2)
                      || '/' || count(*)
               FROM bills b WHERE b.team_id = t.id) <> '1/1'
        """,
        like,
        UNBILLED,
    )
    open_months = await pool.fetchval(
        """
        SELECT count(*) FROM billing_months
        WHERE team_id LIKE $1 AND (closed_at IS NULL OR additional_billed <> additional_spent)
        """,
        like,
    )
    paid = Counter(inv["customer"] for inv in fake.invoices.values() if inv["status"] == "paid")
    customers = [c for c in fake.customers if c.startswith("cus_" + prefix)]
    mismatches = sum(paid.get(c, 0) != 1 for c in customers)
    drift = [r for r in await ledger.drift() if str(r["team_id"]).startswith(prefix)]
    return {
        "bills": int(bills["bills"]),
        "bills_paid": int(bills["paid"]),
        "invoices": len(fake.invoices),
        "invoices_paid": sum(paid.values()),
        "teams_not_billed_once": int(not_billed_once),
        "teams_not_paid_once": mismatches + (teams - len(customers)),
        "months_not_closed": int(open_months),
        "drift_rows": len(drift),
        "fake_errors": len(fake.internal_errors),
        "stripe_requests": len(fake.requests),
    }
