"""Billing-month arithmetic (Stripe's anchor rule, UTC) in the database function itself."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.service import Ledger
from tests.clock import at
from tests.factories import make_team


async def period(pool: asyncpg.Pool, anchor: datetime, when: datetime) -> tuple[datetime, datetime]:
    row = await pool.fetchrow("SELECT * FROM tokens_period($1, $2)", anchor, when)
    assert row is not None
    return row["period_start"], row["period_end"]


@pytest.mark.parametrize(
    ("anchor", "when", "start", "end"),
    [
        # Anchor on the 31st: clamp to each month's last day, never drift.
        ("2026-01-31", "2026-02-15", "2026-01-31", "2026-02-28"),
        ("2026-01-31", "2026-02-28", "2026-02-28", "2026-03-31"),
        ("2026-01-31", "2026-03-31", "2026-03-31", "2026-04-30"),
        ("2026-01-31", "2026-05-01", "2026-04-30", "2026-05-31"),
        # Leap year.
        ("2028-01-31", "2028-02-29T12:00:00", "2028-02-29", "2028-03-31"),
        ("2028-01-29", "2028-02-28", "2028-01-29", "2028-02-29"),
        ("2028-02-29", "2029-02-28T01:00:00", "2029-02-28", "2029-03-29"),
        ("2026-01-30", "2026-02-28", "2026-02-28", "2026-03-30"),
        ("2026-01-28", "2026-02-28", "2026-02-28", "2026-03-28"),
        # Exactly at a boundary: the new month starts there (start inclusive).
        (
            "2026-01-15T09:30:00",
            "2026-03-15T09:30:00",
            "2026-03-15T09:30:00",
            "2026-04-15T09:30:00",
        ),
        (
            "2026-01-15T09:30:00",
            "2026-03-15T09:29:59",
            "2026-02-15T09:30:00",
            "2026-03-15T09:30:00",
        ),
        # Before the anchor (a future subscription start) and across years.
        ("2026-05-10", "2026-03-01", "2026-02-10", "2026-03-10"),
        ("2025-12-31", "2026-12-31T23:59:59", "2026-12-31", "2027-01-31"),
    ],
)
async def test_known_periods(
    pool: asyncpg.Pool, anchor: str, when: str, start: str, end: str
) -> None:
    assert await period(pool, at(anchor), at(when)) == (at(start), at(end))


instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(anchor=instants, when=instants)
async def test_periods_tile_time(pool: asyncpg.Pool, anchor: datetime, when: datetime) -> None:
    """The month containing `when` contains it; its neighbours touch it exactly;
    its start is the anchor's day of month, clamped to the month's length."""
    start, end = await period(pool, anchor, when)
    assert start <= when < end
    assert timedelta(days=28) <= end - start <= timedelta(days=31)
    assert await period(pool, anchor, end) == (end, (await period(pool, anchor, end))[1])
    assert (await period(pool, anchor, start - timedelta(microseconds=1)))[1] == start
    assert start.time() == anchor.time()
    assert start.day == anchor.day or (
        start.day < anchor.day and (start + timedelta(days=1)).day == 1
    )


async def test_yearly_subscriptions_have_monthly_billing_months(ledger: Ledger) -> None:
    await make_team(ledger, "y", plan="sales_engagement", interval="year", anchor="2026-01-31")
    starts = []
    for when in ("2026-02-10", "2026-03-10", "2026-04-10", "2026-12-31"):
        section = await ledger.billing("y", at=at(when))
        starts.append(section.period_start)
        assert section.free_granted == 500
    assert starts == [at("2026-01-31"), at("2026-02-28"), at("2026-03-31"), at("2026-12-31")]


async def test_a_hold_after_its_months_end_goes_into_the_next_month(ledger: Ledger) -> None:
    """Alone, and in one batch with holds of the months around it in any order: each
    charge is in the month its hold was placed in (opened by the hold if need be),
    and each month counts its own holds only."""
    jan, feb, mar = at("2026-01-01"), at("2026-02-01"), at("2026-03-01")
    await make_team(ledger, "alone", seats=1)
    await make_team(ledger, "batch", seats=1)
    last = await ledger.hold("alone", "enrich", 1, key="jan", at=at("2026-01-31T23:59:59"))
    first = await ledger.hold("alone", "enrich", 1, key="feb", at=feb)
    assert (last.period_start, first.period_start) == (jan, feb)

    await ledger.hold("batch", "enrich", 1, key="open", at=at("2026-01-10"))  # January open
    batches = ledger.group.batches
    held = await asyncio.gather(
        ledger.hold("batch", "enrich", 1, key="feb", at=feb),
        ledger.hold("batch", "enrich", 1, key="jan", at=at("2026-01-31T23:59:59")),
        ledger.hold("batch", "enrich", 1, key="mar", at=at("2026-03-02")),
    )
    assert ledger.group.batches == batches + 1  # one tokens_apply call
    assert [h.period_start for h in held] == [feb, jan, mar]
    assert [h.period_end for h in held] == [mar, feb, at("2026-04-01")]
    tokens = held[0].tokens
    for month, count in ((jan, 2), (feb, 1), (mar, 1)):
        section = await ledger.billing("batch", at=month)
        assert (section.period_start, section.held) == (month, count * tokens)
