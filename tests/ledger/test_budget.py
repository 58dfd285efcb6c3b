"""Budget control on the ledger: member caps, quotes, the month's forecast."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

import asyncpg
import pytest

from ledger.budget import forecast, money, quote
from ledger.catalog import DEFAULT_CATALOG
from ledger.errors import BadInput, NotAdmin, UnknownTeam
from ledger.service import Ledger
from tests.clock import at
from tests.factories import make_team

T0 = at("2026-03-10T12:00:00")
T_NEXT = at("2026-04-10T12:00:00")  # the following billing month (anchor 2026-01-01)


async def _cap(ledger: Ledger, member: str, tokens: int | None, when=T0) -> None:  # type: ignore[no-untyped-def]
    await ledger.set_member_cap("acme", member, tokens, actor="ann", role="admin", at=when)


async def _snapshot(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    rows = []
    for table in ("charges", "billing_months", "member_months", "member_caps"):
        rows += [(table, *r) for r in await pool.fetch(f"SELECT * FROM {table} ORDER BY 1, 2")]
    return rows


# -- member caps -------------------------------------------------------------


async def test_a_hold_over_the_members_cap_is_refused_whole(ledger: Ledger) -> None:
    await make_team(ledger, seats=2, limit=1000)  # 500 free + 1,000 additional
    await _cap(ledger, "bob", 25)
    first = await ledger.hold("acme", "enrich", 2, key="k1", at=T0, member="bob")
    assert (first.state, first.tokens) == ("held", 20)
    over = await ledger.hold("acme", "enrich", 1, key="k2", at=T0, member="bob")
    assert over.refused and over.refusal == "member_cap" and over.charge_id is None
    # The team had room: another member, or no member, still spends.
    other = await ledger.hold("acme", "enrich", 1, key="k3", at=T0, member="eve")
    anyone = await ledger.hold("acme", "enrich", 1, key="k4", at=T0)
    assert other.state == anyone.state == "held"
    # What is left under the cap still fits.
    last = await ledger.hold("acme", "debounce", 5, key="k5", at=T0, member="bob")
    assert last.state == "held"
    section = await ledger.billing("acme", at=T0)
    assert [(m.member, m.cap, m.held, m.spent) for m in section.members] == [("bob", 25, 25, 0)]


async def test_the_team_room_refusal_keeps_its_own_code(ledger: Ledger) -> None:
    await make_team(ledger)  # 250 free, no additional
    await _cap(ledger, "bob", 10_000)
    held = await ledger.hold("acme", "ai_sequence", 6, key="k1", at=T0, member="bob")
    assert held.refused and held.refusal == "not_enough_tokens"


async def test_32_concurrent_holds_of_one_member_never_pass_the_cap(
    ledger: Ledger, database_url: str
) -> None:
    await make_team(ledger, seats=4, limit=5000)  # plenty of team room
    await _cap(ledger, "bob", 95)  # 9 holds of 10 fit, not 10
    pools = [await asyncpg.create_pool(database_url, min_size=4, max_size=8) for _ in range(2)]
    try:
        ledgers = [Ledger(p, DEFAULT_CATALOG) for p in pools]  # two processes' worth
        results = await asyncio.gather(
            *(
                ledgers[i % 2].hold("acme", "enrich", 1, key=f"job:{i}", at=T0, member="bob")
                for i in range(32)
            )
        )
    finally:
        for p in pools:
            await p.close()
    held = [r for r in results if not r.refused]
    assert len(held) == 9
    assert {r.refusal for r in results if r.refused} == {"member_cap"}
    section = await ledger.billing("acme", at=T0)
    assert section.members[0].held == 90


async def test_released_tokens_come_back_under_the_cap(ledger: Ledger) -> None:
    await make_team(ledger)
    await _cap(ledger, "bob", 10)
    held = await ledger.hold("acme", "enrich", 1, key="k1", at=T0, member="bob")
    assert held.charge_id is not None
    assert (await ledger.hold("acme", "debounce", 1, key="k2", at=T0, member="bob")).refused
    await ledger.release(held.charge_id, at=T0)
    again = await ledger.hold("acme", "enrich", 1, key="k3", at=T0, member="bob")
    assert again.state == "held" and again.charge_id is not None
    await ledger.capture(again.charge_id, at=T0)
    (bob,) = (await ledger.billing("acme", at=T0)).members
    assert (bob.held, bob.spent, bob.left) == (0, 10, 0)


async def test_a_cap_set_after_spending_counts_what_was_spent(ledger: Ledger) -> None:
    await make_team(ledger)
    _, captured = await ledger.charge("acme", "enrich", 3, key="c1", at=T0, member="bob")
    assert captured is not None and captured.charge.member == "bob"
    await _cap(ledger, "bob", 40)  # 30 spent already: 10 left
    (bob,) = (await ledger.billing("acme", at=T0)).members
    assert (bob.spent, bob.left) == (30, 10)
    assert (await ledger.hold("acme", "enrich", 2, key="k1", at=T0, member="bob")).refused
    assert not (await ledger.hold("acme", "enrich", 1, key="k2", at=T0, member="bob")).refused


async def test_a_cap_lowered_below_the_spend_leaves_nothing_and_takes_nothing_back(
    ledger: Ledger,
) -> None:
    await make_team(ledger)
    await _cap(ledger, "bob", 100)
    held = await ledger.hold("acme", "ai_sequence", 1, key="k1", at=T0, member="bob")
    assert held.charge_id is not None
    await _cap(ledger, "bob", 20)
    refused = await ledger.hold("acme", "debounce", 1, key="k2", at=T0, member="bob")
    assert refused.refused and refused.refusal == "member_cap"
    settled = await ledger.capture(held.charge_id, at=T0)  # the hold placed before still settles
    assert settled.charge.state == "captured"
    (bob,) = (await ledger.billing("acme", at=T0)).members
    assert (bob.cap, bob.spent, bob.left) == (20, 50, 0)


async def test_a_cap_of_zero_spends_nothing_and_removing_it_lifts_it(ledger: Ledger) -> None:
    await make_team(ledger)
    await _cap(ledger, "bob", 0)
    assert (await ledger.hold("acme", "debounce", 1, key="k1", at=T0, member="bob")).refused
    await _cap(ledger, "bob", None)
    assert not (await ledger.hold("acme", "debounce", 1, key="k2", at=T0, member="bob")).refused
    assert (await ledger.billing("acme", at=T0)).members == []
    # Set again later: the member's totals are rebuilt from the charges made meanwhile.
    await ledger.hold("acme", "enrich", 1, key="k3", at=T0, member="bob")
    await _cap(ledger, "bob", 12)
    assert (await ledger.hold("acme", "debounce", 2, key="k4", at=T0, member="bob")).refused
    assert not (await ledger.hold("acme", "debounce", 1, key="k5", at=T0, member="bob")).refused
    assert await ledger.drift() == []


async def test_the_cap_is_per_billing_month(ledger: Ledger) -> None:
    await make_team(ledger)
    await _cap(ledger, "bob", 10)
    assert not (await ledger.hold("acme", "enrich", 1, key="k1", at=T0, member="bob")).refused
    assert (await ledger.hold("acme", "enrich", 1, key="k2", at=T0, member="bob")).refused
    assert not (await ledger.hold("acme", "enrich", 1, key="k3", at=T_NEXT, member="bob")).refused


async def test_a_replayed_key_answers_its_charge_whatever_the_cap_is_now(ledger: Ledger) -> None:
    await make_team(ledger)
    first = await ledger.hold("acme", "enrich", 1, key="k1", at=T0, member="bob")
    await _cap(ledger, "bob", 0)
    again = await ledger.hold("acme", "enrich", 1, key="k1", at=T0, member="bob")
    assert again.replayed and again.charge_id == first.charge_id


async def test_cap_changes_are_for_admins_and_recorded(ledger: Ledger) -> None:
    await make_team(ledger)
    with pytest.raises(NotAdmin):
        await ledger.set_member_cap("acme", "bob", 5, actor="bob", role="member", at=T0)
    with pytest.raises(BadInput, match="cannot be negative"):
        await ledger.set_member_cap("acme", "bob", -1, actor="ann", role="admin", at=T0)
    with pytest.raises(BadInput, match="member"):
        await ledger.set_member_cap("acme", "bo\nb", 5, actor="ann", role="admin", at=T0)
    with pytest.raises(UnknownTeam):
        await ledger.set_member_cap("nope", "bob", 5, actor="ann", role="admin", at=T0)
    assert await ledger.member_cap_changes("acme") == []
    await _cap(ledger, "bob", 5)
    await _cap(ledger, "bob", None)
    changes = await ledger.member_cap_changes("acme")
    assert [(c.actor, c.old_cap, c.new_cap) for c in changes] == [
        ("ann", None, 5),
        ("ann", 5, None),
    ]


# -- quotes ------------------------------------------------------------------


async def test_a_quote_splits_like_a_hold_and_holds_nothing(ledger: Ledger) -> None:
    await make_team(ledger, limit=300)  # 250 free + 300 additional
    await ledger.hold("acme", "enrich", 20, key="k1", at=T0)  # 200 held: 50 free left
    before = await _snapshot(ledger.pool)
    q = await ledger.quote("acme", "enrich", leads=40, at=T0)  # 400 tokens
    assert (q.tokens, q.free_tokens, q.additional_tokens) == (400, 50, 350)
    assert (q.cost, q.currency) == ("3.50", "usd")
    assert (q.leads, q.leads_that_fit, q.fits) == (40, 35, False)  # 350 of room, 10 a lead
    assert await _snapshot(ledger.pool) == before
    small = await ledger.quote("acme", "ai_sequence", quantity=2, at=T0)
    assert (small.tokens, small.fits, small.leads, small.cost) == (100, True, None, "0.50")


async def test_a_quote_counts_the_members_cap(ledger: Ledger) -> None:
    await make_team(ledger, limit=300)
    await _cap(ledger, "bob", 35)
    q = await ledger.quote("acme", "enrich", leads=5, member="bob", at=T0)
    assert (q.leads_that_fit, q.fits) == (3, False)
    anyone = await ledger.quote("acme", "enrich", leads=5, at=T0)
    assert anyone.fits


async def test_quote_refuses_bad_input(ledger: Ledger) -> None:
    await make_team(ledger)
    with pytest.raises(BadInput):
        await ledger.quote("acme", "enrich", quantity=0, at=T0)
    with pytest.raises(UnknownTeam):
        await ledger.quote("nope", "enrich", at=T0)


def test_money_keeps_the_currencys_decimals() -> None:
    assert money(333, Decimal("0.015"), "usd") == "5.00"  # 4.995 rounds half-up
    assert money(7, Decimal("1"), "jpy") == "7"
    assert money(0, Decimal("0.01"), "eur") == "0.00"


# -- forecast ----------------------------------------------------------------


async def _section(ledger: Ledger, used: int, *, limit: int = 0):  # type: ignore[no-untyped-def]
    """The team's March month (Mar 1 - Apr 1, 31 days) with `used` tokens spent."""
    await make_team(ledger, seats=4, limit=limit)  # 1,000 free a month
    section = await ledger.billing("acme", at=T0)
    free = min(used, section.free_granted)
    return replace(
        section, free_spent=free, additional_spent=used - free, free_available=1000 - free
    )


async def test_no_forecast_in_the_months_first_day(ledger: Ledger) -> None:
    section = await _section(ledger, 100)
    assert forecast(section, section.period_start + timedelta(hours=23)) is None
    assert forecast(section, section.period_start + timedelta(days=1)) is not None


async def test_a_linear_pace_gives_the_days_things_run_out(ledger: Ledger) -> None:
    section = await _section(ledger, 500, limit=1000)  # 500 in the first 10 days: 50 a day
    f = forecast(section, section.period_start + timedelta(days=10))
    assert f is not None
    assert f.free_runs_out == date(2026, 3, 21)  # 1,000 at 50 a day: day 20
    assert f.additional_runs_out is None  # 2,000 would take 40 days: not this month
    # 31 days at 50 a day = 1,550: 550 additional, USD 5.50.
    assert f.projected_additional_cost == "5.50"


async def test_a_pace_past_the_limit_stops_at_the_limit(ledger: Ledger) -> None:
    section = await _section(ledger, 1200, limit=300)  # 120 a day over 10 days
    f = forecast(section, section.period_start + timedelta(days=10))
    assert f is not None
    assert f.free_runs_out == date(2026, 3, 9)  # 1,000 / 120 = 8.33 days: already gone
    assert f.additional_runs_out == date(2026, 3, 11)  # 1,300 / 120 = 10.8 days
    assert f.projected_additional_cost == "3.00"  # the limit, not 2,720 tokens


async def test_no_use_runs_out_nothing(ledger: Ledger) -> None:
    section = await _section(ledger, 0, limit=100)
    f = forecast(section, section.period_start + timedelta(days=5))
    assert f is not None
    assert (f.free_runs_out, f.additional_runs_out, f.projected_additional_cost) == (
        None,
        None,
        "0.00",
    )


def test_quote_of_nothing_left_fits_no_lead() -> None:
    from ledger.results import BillingSection

    empty = BillingSection(
        team="acme", plan="email_outreach", seats=1, interval="month", stripe_customer=None,
        period_start=T0, period_end=T_NEXT, free_granted=250, free_spent=250, free_held=0,
        free_available=0, additional_limit=0, additional_limit_usd=Decimal("0.00"),
        additional_spent=0, additional_held=0, additional_available=0,
        additional_spent_usd=Decimal("0.00"), additional_billed=0, unit_price=Decimal("0.01"),
        currency="usd", recent_charges=[], members=[],
    )  # fmt: skip
    q = quote(empty, action="enrich", tokens_each=10, count=3, is_lead_list=True, member_left=None)
    assert (q.leads_that_fit, q.fits, q.free_tokens, q.additional_tokens) == (0, False, 0, 30)


async def test_a_grant_used_up_exactly_now_is_dated_today(ledger: Ledger) -> None:
    # 1,000 in 9 days: the line reaches the grant at the reading itself, Mar 10 00:00
    # (a rounded pace put it one second before, on Mar 9).
    section = await _section(ledger, 1000, limit=1000)
    f = forecast(section, section.period_start + timedelta(days=9))
    assert f is not None and f.free_runs_out == date(2026, 3, 10)


async def test_the_projection_rounds_half_up(ledger: Ledger) -> None:
    # 65 tokens in 2 days over a 31-day month: 1,007.5 tokens, rounded to 1,008: 8 additional.
    section = await _section(ledger, 65, limit=1000)
    f = forecast(section, section.period_start + timedelta(days=2))
    assert f is not None and f.projected_additional_cost == "0.08"


async def test_capped_members_read_as_whole_tokens(ledger: Ledger) -> None:
    await make_team(ledger, limit=100)
    await ledger.charge("acme", "enrich", 2, key="c1", at=T0, member="bob")
    await _cap(ledger, "bob", 50)  # no hold under the cap yet: the sum of the charges
    await _cap(ledger, "eve", 50)  # nothing at all
    members = (await ledger.billing("acme", at=T0)).members
    assert [(m.member, m.spent, m.held, m.left) for m in members] == [
        ("bob", 20, 0, 30),
        ("eve", 0, 0, 50),
    ]
    assert all(type(v) is int for m in members for v in (m.spent, m.held, m.left))
    quoted = await ledger.quote("acme", "enrich", leads=5, member="bob", at=T0)
    assert type(quoted.leads_that_fit) is int and quoted.leads_that_fit == 3
