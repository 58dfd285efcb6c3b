"""README "How the ledger works": grants that only grow, trial once, trial conversion; the
audited limit."""

from __future__ import annotations

import pytest

from ledger.errors import AnchorConflict, NotAdmin, TrialNoAdditional
from ledger.service import Ledger
from tests.clock import at
from tests.factories import make_team

T0 = at("2026-03-10T12:00:00")


async def test_seats_up_down_up_grant_the_highest_once(ledger: Ledger) -> None:
    await make_team(ledger, at="2026-03-02")
    await ledger.charge("acme", "ai_sequence", 5, key="a", at=at("2026-03-02"))  # 250: all free
    grants = []
    for seats, when in [(3, "2026-03-03"), (1, "2026-03-04"), (3, "2026-03-05")]:
        await make_team(ledger, seats=seats, at=when)
        grants.append((await ledger.billing("acme", at=at(when))).free_granted)
    assert grants == [750, 750, 750]
    section = await ledger.billing("acme", at=at("2026-03-06"))
    assert section.free_spent == 250 and section.free_available == 500
    # The next month starts from the plan and seats in force then.
    await make_team(ledger, at="2026-03-20")
    assert (await ledger.billing("acme", at=at("2026-04-02"))).free_granted == 250


async def test_upgrade_raises_at_once_downgrade_never_lowers(ledger: Ledger) -> None:
    await make_team(ledger, seats=2, at="2026-03-02")
    assert (await ledger.billing("acme", at=T0)).free_granted == 500
    await make_team(ledger, plan="sales_engagement", seats=2, at="2026-03-10")
    assert (await ledger.billing("acme", at=T0)).free_granted == 1000
    await make_team(ledger, seats=2, at="2026-03-11")
    assert (await ledger.billing("acme", at=at("2026-03-12"))).free_granted == 1000
    assert (await ledger.billing("acme", at=at("2026-04-01"))).free_granted == 500


async def test_trial_grants_100_once_ever(ledger: Ledger) -> None:
    await make_team(ledger, plan="trial", seats=5, at="2026-03-01")
    first = await ledger.billing("acme", at=at("2026-03-02"))
    assert first.free_granted == 100 and first.additional_limit == 0
    nxt = await ledger.billing("acme", at=at("2026-04-02"))
    assert nxt.free_granted == 0
    with pytest.raises(TrialNoAdditional):
        await ledger.set_limit("acme", 10, actor="ann", role="admin", at=T0)


async def test_trial_conversion_starts_the_paid_month_at_the_anchor(ledger: Ledger) -> None:
    await make_team(ledger, plan="trial", at="2026-03-01")
    await ledger.charge("acme", "ai_icebreaker", 3, key="t", at=at("2026-03-05"))  # 30 of 100
    await make_team(
        ledger, plan="sales_engagement", seats=2, at="2026-03-12", anchor="2026-03-12T00:00:00"
    )
    trial_month = await ledger.billing("acme", at=at("2026-03-11T23:59:59"))
    assert (trial_month.period_start, trial_month.period_end) == (
        at("2026-03-01"),
        at("2026-03-12"),
    )
    assert trial_month.free_spent == 30 and trial_month.free_granted == 100
    paid = await ledger.billing("acme", at=at("2026-03-12T08:00:00"))
    assert (paid.period_start, paid.period_end) == (at("2026-03-12"), at("2026-04-12"))
    assert paid.free_granted == 1000 and paid.free_spent == 0  # unspent trial tokens ended


async def test_an_anchor_already_past_ends_the_month_at_the_change(ledger: Ledger) -> None:
    # Nov 15 - Dec 15; on Dec 7 the anchor becomes Nov 20 (a webhook delivered late).
    await make_team(ledger, at="2026-11-15", anchor="2026-11-15")
    await ledger.charge("acme", "enrich", 25, key="spent", at=at("2026-12-07T09:00:00"))
    await make_team(ledger, at="2026-12-07T10:00:00", anchor="2026-11-20")
    old = await ledger.billing("acme", at=at("2026-12-07T09:59:59"))
    # Not cut at Nov 20, which would leave the Dec 7 charge in a month that ended before it.
    assert (old.period_start, old.period_end) == (at("2026-11-15"), at("2026-12-07T10:00:00"))
    assert old.free_spent == 250 and [c.idempotency_key for c in old.recent_charges] == ["spent"]
    new = await ledger.billing("acme", at=at("2026-12-07T10:00:00"))
    assert (new.period_start, new.period_end) == (at("2026-12-07T10:00:00"), at("2026-12-20"))
    assert new.free_spent == 0 and new.recent_charges == []
    after = await ledger.billing("acme", at=at("2026-12-21"))
    assert (after.period_start, after.period_end) == (at("2026-12-20"), at("2027-01-20"))


async def test_anchor_cannot_move_before_an_opened_month(ledger: Ledger) -> None:
    await make_team(ledger, at="2026-03-02", anchor="2026-03-01")
    await ledger.billing("acme", at=at("2026-04-02"))  # opens Apr 1 - May 1
    with pytest.raises(AnchorConflict, match="billing month") as conflict:
        await make_team(ledger, at="2026-03-20", anchor="2026-03-15")
    assert conflict.value.team == "acme"
    team = await ledger.get_team("acme")
    assert team.anchor == at("2026-03-01")


async def test_limit_changes_are_admin_only_and_recorded(ledger: Ledger) -> None:
    await make_team(ledger, plan="sales_engagement", at="2026-03-02")
    await ledger.set_limit("acme", 100, actor="ann", role="admin", at=at("2026-03-02"))
    with pytest.raises(NotAdmin):
        await ledger.set_limit("acme", 1_000_000, actor="bob", role="member", at=T0)
    await ledger.set_limit("acme", 40, actor="cat", role="admin", at=at("2026-03-03"))
    changes = await ledger.limit_changes("acme")
    assert [(c.actor, c.old_limit, c.new_limit, c.changed_at) for c in changes] == [
        ("ann", 0, 100, at("2026-03-02")),
        ("cat", 100, 40, at("2026-03-03")),
    ]


async def test_lowering_the_limit_below_spent_leaves_nothing_available(ledger: Ledger) -> None:
    await make_team(ledger, at="2026-03-02")
    await ledger.set_limit("acme", 100, actor="ann", role="admin", at=T0)
    await ledger.charge("acme", "ai_sequence", 6, key="a", at=T0)  # 250 free + 50 additional
    await ledger.set_limit("acme", 20, actor="ann", role="admin", at=T0)
    section = await ledger.billing("acme", at=T0)
    assert section.additional_spent == 50 and section.additional_available == 0
    refused, _ = await ledger.charge("acme", "debounce", 1, key="b", at=T0)
    assert refused.refused
