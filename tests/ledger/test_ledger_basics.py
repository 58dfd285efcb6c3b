"""Holds, captures, releases and the billing section on a real Postgres."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from db.queries import q
from ledger.errors import BadInput, ChargeAlreadySettled, IdempotencyMismatch, UnknownTeam
from ledger.service import Ledger
from tests.clock import at
from tests.factories import make_team

T0 = at("2026-03-10T12:00:00")


# The paid team of these tests: email_outreach, anchored on the 15th.
ANCHOR = at("2026-01-15T00:00:00")


async def test_free_tokens_are_per_team_plan_times_seats(ledger: Ledger) -> None:
    await make_team(ledger, seats=2, anchor=ANCHOR)
    section = await ledger.billing("acme", at=T0)
    assert section.free_granted == 500
    assert (section.period_start, section.period_end) == (
        at("2026-02-15T00:00:00"),
        at("2026-03-15T00:00:00"),
    )
    assert section.free_available == 500 and section.additional_available == 0


async def test_free_first_then_additional_in_one_charge(ledger: Ledger) -> None:
    await make_team(ledger, anchor=ANCHOR, limit=100)
    held, _ = await ledger.charge("acme", "ai_icebreaker", 24, key="k1", at=T0)  # 240 tokens
    assert (held.free_tokens, held.additional_tokens) == (240, 0)
    held, settled = await ledger.charge("acme", "ai_icebreaker", 2, key="k2", at=T0)  # 20
    assert (held.free_tokens, held.additional_tokens) == (10, 10)
    assert settled is not None and settled.charge.state == "captured"
    section = await ledger.billing("acme", at=T0)
    assert section.free_spent == 250 and section.free_available == 0
    assert section.additional_spent == 10 and section.additional_available == 90
    assert section.additional_spent_usd == Decimal("0.10")
    assert section.additional_limit_usd == Decimal("1.00")


async def test_a_charge_that_does_not_fit_is_refused_whole(ledger: Ledger) -> None:
    await make_team(ledger, anchor=ANCHOR, limit=5)  # 250 free + 5 additional
    await ledger.charge("acme", "ai_sequence", 5, key="k1", at=T0)  # 250
    held, settled = await ledger.charge("acme", "ai_icebreaker", 1, key="k2", at=T0)  # 10 > 5
    assert held.refused and settled is None
    assert (held.free_available, held.additional_available) == (0, 5)
    section = await ledger.billing("acme", at=T0)
    assert section.free_spent == 250 and section.additional_spent == 0 and section.held == 0
    assert [c.idempotency_key for c in await ledger.history("acme")] == ["k1"]


async def test_hold_counts_at_once_and_release_gives_back(ledger: Ledger) -> None:
    await make_team(ledger, anchor=ANCHOR)
    held = await ledger.hold("acme", "ai_sequence", 4, key="job1", at=T0, job_id="job1")
    assert held.state == "held" and held.tokens == 200
    refused = await ledger.hold("acme", "ai_sequence", 2, key="job2", at=T0)
    assert refused.refused and refused.free_available == 50
    section = await ledger.billing("acme", at=T0)
    assert section.held == 200 and section.free_available == 50
    assert held.charge_id is not None
    released = await ledger.release(held.charge_id, at=T0)
    assert released.changed and released.charge.state == "released"
    section = await ledger.billing("acme", at=T0)
    assert section.held == 0 and section.free_available == 250 and section.free_spent == 0


async def test_capture_and_release_happen_exactly_once(ledger: Ledger) -> None:
    await make_team(ledger, seats=2, anchor=ANCHOR)
    held = await ledger.hold("acme", "enrich", 1, key="job:lead", at=T0)
    assert held.charge_id is not None
    first = await ledger.capture(held.charge_id, at=T0)
    again = await ledger.capture(held.charge_id, at=T0)
    assert first.changed and not again.changed
    with pytest.raises(ChargeAlreadySettled, match="already captured") as settled:
        await ledger.release(held.charge_id, at=T0)
    assert (settled.value.charge_id, settled.value.state) == (held.charge_id, "captured")
    other = await ledger.hold("acme", "enrich", 1, key="job:lead2", at=T0)
    assert other.charge_id is not None
    await ledger.release(other.charge_id, at=T0)
    with pytest.raises(ChargeAlreadySettled, match="already released"):
        await ledger.capture(other.charge_id, at=T0)
    assert (await ledger.billing("acme", at=T0)).free_spent == 10


async def test_same_key_returns_same_charge_whatever_the_clock(ledger: Ledger) -> None:
    await make_team(ledger, seats=2, anchor=ANCHOR)
    first = await ledger.hold("acme", "debounce", 1, key="job7:lead3", at=T0)
    later = await ledger.hold("acme", "debounce", 1, key="job7:lead3", at=T0 + timedelta(days=40))
    assert later.replayed and later.charge_id == first.charge_id
    assert later.period_start == first.period_start
    with pytest.raises(IdempotencyMismatch, match="job7:lead3") as mismatch:
        await ledger.hold("acme", "debounce", 2, key="job7:lead3", at=T0)
    assert (mismatch.value.team, mismatch.value.key, mismatch.value.charge_id) == (
        "acme",
        "job7:lead3",
        first.charge_id,
    )
    with pytest.raises(IdempotencyMismatch):
        await ledger.hold("acme", "enrich", 1, key="job7:lead3", at=T0)
    assert len(await ledger.history("acme")) == 1


async def test_capture_after_month_end_stays_in_the_hold_month(ledger: Ledger) -> None:
    await make_team(ledger, anchor=ANCHOR)
    late = at("2026-03-14T23:59:59")
    held = await ledger.hold("acme", "ai_sequence", 1, key="j", at=late)
    assert held.charge_id is not None
    await ledger.capture(held.charge_id, at=at("2026-03-15T00:00:05"))
    march = await ledger.billing("acme", at=at("2026-03-15T00:00:06"))
    assert march.period_start == at("2026-03-15T00:00:00") and march.free_spent == 0
    february = await ledger.billing("acme", at=late)
    assert february.free_spent == 50 and february.held == 0


async def test_free_tokens_do_not_roll_over(ledger: Ledger) -> None:
    await make_team(ledger, anchor=ANCHOR)
    await ledger.charge("acme", "ai_icebreaker", 1, key="a", at=T0)
    nxt = await ledger.billing("acme", at=at("2026-04-01T00:00:00"))
    assert nxt.free_granted == 250 and nxt.free_spent == 0 and nxt.free_available == 250


async def test_unknown_team_is_refused(ledger: Ledger) -> None:
    with pytest.raises(UnknownTeam, match="ghost"):
        await ledger.hold("ghost", "debounce", 1, key="k", at=T0)
    with pytest.raises(UnknownTeam):
        await ledger.billing("ghost", at=T0)


async def test_a_new_team_id_with_a_dot_segment_is_refused(ledger: Ledger) -> None:
    # HTTP clients rewrite /v1/teams/a/../b/billing to /v1/teams/b/billing.
    for team in ("a/../b", "a/./b", "a/..", "org/."):
        with pytest.raises(BadInput, match="between slashes"):
            await make_team(ledger, team)
        with pytest.raises(UnknownTeam):
            await ledger.get_team(team)
    for team in ("a..b", "a/..b/c", "v1.2/x"):  # dots inside a segment are fine
        assert (await make_team(ledger, team)).id == team


async def test_a_team_made_before_the_dot_segment_rule_keeps_working(ledger: Ledger) -> None:
    # As Ledger.set_team made it before the rule: the same SQL, without the check.
    await ledger.pool.fetchrow(
        q("set_team"), "old/../team", "email_outreach", 1, "month", ANCHOR, None, T0
    )
    row, created = await ledger.set_team(
        "old/../team", plan="email_outreach", seats=3, interval="month", anchor=ANCHOR, at=T0
    )
    assert not created and row.seats == 3
    held = await ledger.hold("old/../team", "debounce", 1, key="k", at=T0)
    assert held.charge_id is not None


@pytest.mark.parametrize(
    "when",
    [
        "0001-01-01T00:00:00Z",
        "1999-12-31T23:59:59Z",
        "2200-01-01T00:00:00Z",
        "9999-12-31T00:00:00Z",
    ],
)
async def test_an_instant_out_of_range_is_refused_before_anything_is_written(
    ledger: Ledger, when: str
) -> None:
    await make_team(ledger, anchor=ANCHOR)
    edge = at(when)
    before = await ledger.billing("acme", at=T0)
    calls = (
        lambda: make_team(ledger, "edge", anchor=edge, at=T0),
        lambda: make_team(ledger, "edge", anchor=ANCHOR, at=edge),
        lambda: ledger.set_limit("acme", 10, actor="ann", role="admin", at=edge),
        lambda: ledger.charge("acme", "enrich", 1, key="k", at=edge),
        lambda: ledger.billing("acme", at=edge),
    )
    for call in calls:
        with pytest.raises(BadInput, match="out of range"):
            await call()
    with pytest.raises(UnknownTeam):
        await ledger.get_team("edge")
    assert await ledger.limit_changes("acme") == []
    async with ledger.pool.acquire() as conn:
        months = await conn.fetchval("SELECT count(*) FROM billing_months WHERE team_id = 'acme'")
    assert months == 1 and await ledger.billing("acme", at=T0) == before


async def test_text_that_postgres_or_the_audit_trail_cannot_take_is_refused(
    ledger: Ledger,
) -> None:
    await make_team(ledger, anchor=ANCHOR)
    for actor in ("ann\x00", "ann\nroot", "a" * 256):
        with pytest.raises(BadInput, match="actor"):
            await ledger.set_limit("acme", 10, actor=actor, role="admin", at=T0)
    for customer in ("cus_\x00", "cus 1", "cus_1\n", "c" * 256):
        with pytest.raises(BadInput, match="stripe customer id"):
            await ledger.set_team(
                "acme", plan="email_outreach", seats=1, interval="month", anchor=ANCHOR, at=T0,
                stripe_customer=customer,
            )  # fmt: skip
    assert await ledger.limit_changes("acme") == []
    assert (await ledger.get_team("acme")).stripe_customer is None


async def test_expire_holds_releases_only_old_holds(ledger: Ledger) -> None:
    await make_team(ledger, seats=2, anchor=ANCHOR)
    old = await ledger.hold("acme", "enrich", 1, key="old", at=T0)
    new = await ledger.hold("acme", "enrich", 1, key="new", at=T0 + timedelta(minutes=30))
    expired = await ledger.expire_holds(older_than=T0 + timedelta(minutes=1), at=T0)
    assert [c.id for c in expired] == [old.charge_id]
    assert expired[0].state == "expired"
    assert new.charge_id is not None
    with pytest.raises(ChargeAlreadySettled, match="already expired"):
        await ledger.capture(old.charge_id or 0, at=T0)
    section = await ledger.billing("acme", at=T0)
    assert section.held == 10
