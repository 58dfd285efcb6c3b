"""README "Bills, exactly once": additional tokens billed to Stripe once, whatever fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from billing.reconcile import ReconcileReport, bill_status, reconcile, team_bills
from billing.sender import StripeSender
from ledger.service import Ledger
from testing.stripe import StripeFake
from tests.clock import at
from tests.factories import make_team

JAN = at("2026-01-15T00:00:00")


def sender_for(
    pool: asyncpg.Pool,
    fake: StripeFake | None,
    retries: int = 0,
    *,
    pay_after: timedelta = timedelta(0),
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    lease_seconds: float = 600,
) -> StripeSender:
    """A sender on the fake. `pay_after=0`: the reconciler pays right after finalizing
    (Stripe's automatic collection would otherwise pay about an hour later)."""
    client = fake.client(max_network_retries=retries) if fake is not None else None
    return StripeSender(pool, client, clock, pay_after=pay_after, lease_seconds=lease_seconds)


def clocked(pool: asyncpg.Pool, fake: StripeFake, when: str, **kw: Any) -> StripeSender:
    """A sender whose clock is the command's (`--at`), as `tokens reconcile` builds it."""
    moment = at(when)
    return sender_for(pool, fake, clock=lambda: moment, **kw)


async def billed_team(
    ledger: Ledger,
    fake: StripeFake | None,
    *,
    team: str = "acme",
    interval: str = "month",
    customer: str | None = "auto",
) -> str | None:
    cus = fake.add_customer() if (fake is not None and customer == "auto") else customer
    await make_team(ledger, team, interval=interval, anchor=JAN, limit=100_000, stripe_customer=cus)
    return cus


async def spend(ledger: Ledger, team: str, tokens: int, when: str, key: str) -> None:
    """Spend exactly `tokens` tokens (debounce: 1 token per lead)."""
    held, _ = await ledger.charge(team, "debounce", tokens, key=key, at=at(when))
    assert not held.refused


async def run(
    pool: asyncpg.Pool, sender: StripeSender, when: str, team: str | None = None
) -> ReconcileReport:
    return await reconcile(pool, sender, team=team, at=at(when))


def invoices_of(fake: StripeFake, team: str) -> list[dict]:
    return [i for i in fake.invoices.values() if i["metadata"].get("team") == team]


async def test_threshold_bills_the_whole_unbilled_amount_at_once(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    await spend(ledger, "acme", 250 + 4_999, "2026-02-01", "a")  # 4,999 additional: $49.99
    report = await run(pool, sender_for(pool, stripe_fake), "2026-02-01T01:00:00")
    assert report.created == [] and stripe_fake.invoices == {}
    await spend(ledger, "acme", 2, "2026-02-02", "b")  # 5,001 additional
    report = await run(pool, sender_for(pool, stripe_fake), "2026-02-02T01:00:00")
    assert report.as_dict()["bills_created"] == 1 and report.sent == 1
    [bill] = report.bills
    assert (bill.reason, bill.tokens, bill.amount_cents) == ("threshold", 5001, 5001)
    [invoice] = invoices_of(stripe_fake, "acme")
    assert invoice["status"] == "paid" and invoice["total"] == 5001
    assert invoice["metadata"]["tokens"] == "5001"
    assert invoice["metadata"]["billing_month"] == "2026-01-15/2026-02-15"
    [line] = invoice["lines"]["data"]
    assert "5,001 additional tokens x USD 0.01" in line["description"]
    assert line["period"] == {  # Stripe's end is inclusive: the month's last second
        "start": int(at("2026-01-15").timestamp()),
        "end": int(at("2026-02-15").timestamp()) - 1,
    }
    assert bill.stripe_invoice_id == invoice["id"] and bill_status(bill) == "paid"
    section = await ledger.billing("acme", at=at("2026-02-02"))
    assert section.additional_billed == 5001


async def test_threshold_crossed_twice_then_month_end(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    sender = sender_for(pool, stripe_fake)
    await spend(ledger, "acme", 250 + 6000, "2026-01-20", "a")
    await run(pool, sender, "2026-01-20T01:00:00")
    await spend(ledger, "acme", 5000, "2026-01-25", "b")
    await run(pool, sender, "2026-01-25T01:00:00")
    await spend(ledger, "acme", 123, "2026-02-14T23:00:00", "c")
    await run(pool, sender, "2026-02-14T23:30:00")  # below threshold, month not over
    await run(pool, sender, "2026-02-15T00:00:00")  # month over
    await run(pool, sender, "2026-02-16T00:00:00")  # nothing more
    bills = await team_bills(pool, "acme")
    assert [(b.reason, b.tokens) for b in bills] == [
        ("threshold", 6000),
        ("threshold", 5000),
        ("month_end", 123),
    ]
    assert sorted(i["total"] for i in invoices_of(stripe_fake, "acme")) == [123, 5000, 6000]


async def test_yearly_subscription_is_billed_every_month(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake, interval="year")
    sender = sender_for(pool, stripe_fake)
    for n, (spend_at, close_at) in enumerate(
        [("2026-01-20", "2026-02-15"), ("2026-02-20", "2026-03-15"), ("2026-03-20", "2026-04-15")]
    ):
        await spend(ledger, "acme", 250 + 100 * (n + 1), spend_at, f"k{n}")
        report = await run(pool, sender, close_at)
        assert [(b.reason, b.tokens) for b in report.created] == [("month_end", 100 * (n + 1))]
    months = [i["metadata"]["billing_month"] for i in invoices_of(stripe_fake, "acme")]
    assert sorted(months) == [
        "2026-01-15/2026-02-15",
        "2026-02-15/2026-03-15",
        "2026-03-15/2026-04-15",
    ]


async def test_a_month_of_free_usage_makes_no_bill(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    await spend(ledger, "acme", 200, "2026-01-20", "a")
    report = await run(pool, sender_for(pool, stripe_fake), "2026-03-01")
    assert report.created == [] and stripe_fake.invoices == {}
    closed = await pool.fetchval(
        "SELECT count(*) FROM billing_months WHERE team_id = 'acme' AND closed_at IS NOT NULL"
    )
    assert closed == 1


async def test_usage_straddling_the_month_end_waits_for_its_hold(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    sender = sender_for(pool, stripe_fake)
    await spend(ledger, "acme", 300, "2026-02-14T23:59:58", "a")  # 50 additional
    held = await ledger.hold("acme", "enrich", 1, key="late", at=at("2026-02-14T23:59:59"))
    await spend(ledger, "acme", 7, "2026-02-15T00:00:00", "next-month")
    report = await run(pool, sender, "2026-02-15T00:00:01")
    assert report.created == []  # the old month still has a hold in flight
    assert held.charge_id is not None
    await ledger.capture(held.charge_id, at=at("2026-02-15T00:00:02"))
    report = await run(pool, sender, "2026-02-15T00:00:03")
    assert [(b.reason, b.tokens, b.period_start) for b in report.created] == [
        ("month_end", 60, at("2026-01-15"))
    ]


STEPS = ["create_invoice", "create_invoiceitem", "finalize", "pay"]
FAULTS: dict[str, Callable[[StripeFake, str], None]] = {
    "500": lambda f, s: f.fail_next(s, status=500),
    "timeout": lambda f, s: f.timeout_next(s),
    "lost_response": lambda f, s: f.lose_response_next(s),
}


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("expire_keys", [False, True], ids=["keys", "keys-expired"])
async def test_each_fault_at_each_step_ends_with_exactly_one_invoice(
    ledger: Ledger,
    pool: asyncpg.Pool,
    stripe_fake: StripeFake,
    step: str,
    fault: str,
    expire_keys: bool,
) -> None:
    await billed_team(ledger, stripe_fake)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    FAULTS[fault](stripe_fake, step)
    first = await run(pool, sender_for(pool, stripe_fake), "2026-01-20T01:00:00")
    [bill] = first.bills
    assert bill.last_error
    if step == "pay":  # the invoice is open at Stripe: not a failed send
        assert first.failed == 0 and bill.status == "open"
    else:
        assert first.failed == 1 and bill.status == "failed"
    if expire_keys:
        stripe_fake.expire_idempotency_keys()  # more than 24 h later
    second = await run(pool, sender_for(pool, stripe_fake), "2026-01-21T01:00:00")
    assert second.created == [] and second.failed == 0 and second.sent == 1
    [invoice] = invoices_of(stripe_fake, "acme")
    assert invoice["status"] == "paid" and invoice["total"] == 5000
    assert len(invoice["lines"]["data"]) == 1
    assert len(stripe_fake.invoice_items) == 1
    drafts = [i for i in stripe_fake.invoices.values() if i["status"] == "draft"]
    assert drafts == []


async def test_stripe_client_retries_reuse_the_key(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    stripe_fake.lose_response_next("create_invoice")
    report = await run(pool, sender_for(pool, stripe_fake, retries=2), "2026-01-20T01:00:00")
    assert report.sent == 1 and len(stripe_fake.invoices) == 1


async def test_team_without_customer_keeps_its_bill_until_it_has_one(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake, customer=None)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    report = await run(pool, sender_for(pool, stripe_fake), "2026-01-20T01:00:00")
    [bill] = report.bills
    assert bill_status(bill) == "failed" and "no Stripe customer" in (bill.last_error or "")
    assert report.as_dict()["bills_failed"] == 1 and stripe_fake.invoices == {}
    cus = stripe_fake.add_customer()
    await make_team(ledger, anchor=JAN, at="2026-01-21", stripe_customer=cus)
    report = await run(pool, sender_for(pool, stripe_fake), "2026-01-21T01:00:00")
    assert report.created == [] and report.sent == 1
    assert [i["customer"] for i in stripe_fake.invoices.values()] == [cus]


async def test_unknown_customer_and_declined_card_are_reported_and_retried(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake, customer="cus_missing")
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    report = await run(pool, sender_for(pool, stripe_fake), "2026-01-20T01:00:00")
    assert report.failed == 1 and "does not know" in (report.bills[0].last_error or "")

    cus = stripe_fake.add_customer(card_declines=True)
    await make_team(ledger, anchor=JAN, at="2026-01-21", stripe_customer=cus)
    report = await run(
        pool, clocked(pool, stripe_fake, "2026-01-21T01:00:00"), "2026-01-21T01:00:00"
    )
    [bill] = report.bills
    assert bill.error_code == "card_declined" and bill_status(bill) == "payment_failed"
    assert bill.decline_code == "generic_decline" and report.failed == 1
    stripe_fake.set_card_declines(cus, False)
    report = await run(
        pool, clocked(pool, stripe_fake, "2026-01-22T01:00:00"), "2026-01-22T01:00:00"
    )
    assert report.sent == 1 and bill_status(report.bills[0]) == "paid"
    assert len(stripe_fake.invoices) == 1


async def test_without_stripe_key_bills_are_made_and_kept_unsent(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    await billed_team(ledger, None, customer="cus_x")
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    report = await run(pool, sender_for(pool, None), "2026-01-20T01:00:00")
    out = report.as_dict()
    assert out["bills_created"] == 1 and out["bills_failed"] == 0 and out["bills_unsent"] == 1
    assert out["bills"][0]["status"] == "unsent"
    assert "STRIPE_API_KEY" in out["bills"][0]["error"]


async def test_two_reconcilers_at_once_bill_once(
    ledger: Ledger, pool: asyncpg.Pool, database_url: str, stripe_fake: StripeFake
) -> None:
    for n in range(5):
        await billed_team(ledger, stripe_fake, team=f"t{n}")
        await spend(ledger, f"t{n}", 250 + 5000 + n, "2026-01-20", "a")
        await spend(ledger, f"t{n}", 10, "2026-02-14", "b")
    pools = [await asyncpg.create_pool(database_url, min_size=2, max_size=4) for _ in range(2)]
    try:
        reports = await asyncio.gather(
            *(run(p, sender_for(p, stripe_fake), "2026-02-20") for p in pools)
        )
    finally:
        for p in pools:
            await p.close()
    created = [b for r in reports for b in r.created]
    assert len(created) == 5  # one month-end bill per team, made by one run or the other
    again = await run(pool, sender_for(pool, stripe_fake), "2026-02-21")
    assert again.created == [] and again.failed == 0
    for n in range(5):
        [invoice] = invoices_of(stripe_fake, f"t{n}")
        assert invoice["total"] == 5000 + n + 10 and invoice["status"] == "paid"


async def test_a_bill_stays_with_the_customer_of_its_invoice(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    first = await billed_team(ledger, stripe_fake)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    stripe_fake.fail_next("create_invoiceitem", status=500)
    report = await run(pool, sender_for(pool, stripe_fake), "2026-01-20T01:00:00")
    assert report.bills[0].step == "invoice_created"
    other = stripe_fake.add_customer()
    await make_team(ledger, anchor=JAN, at="2026-01-21", stripe_customer=other)
    report = await run(pool, sender_for(pool, stripe_fake), "2026-01-21T01:00:00")
    assert report.sent == 1 and report.bills[0].stripe_customer == first
    [invoice] = stripe_fake.invoices.values()
    assert invoice["customer"] == first and invoice["status"] == "paid"


async def test_leases_end_with_the_send_and_an_attempt_reads_back_only_what_it_missed(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    stripe_fake.lose_response_next("finalize")
    first = await run(pool, sender_for(pool, stripe_fake), "2026-01-20T01:00:00")
    assert first.failed == 1 and first.bills[0].step == "item_added"
    assert await pool.fetchval("SELECT lease_until FROM bills") is None  # released on error
    # Stripe took the item just before: the invoice was a draft, finalized unread.
    assert stripe_fake.calls("retrieve_invoice") == []
    second = await run(pool, sender_for(pool, stripe_fake), "2026-01-21T01:00:00")
    assert second.sent == 1 and second.bills[0].step == "paid"
    # The lost finalize may have happened: read once, then pay on what was read.
    assert len(stripe_fake.calls("retrieve_invoice")) == 1
    assert len(stripe_fake.calls("finalize")) == 1 and len(stripe_fake.calls("pay")) == 1
    leases = await pool.fetch("SELECT step, lease_until FROM bills")
    assert [(r["step"], r["lease_until"]) for r in leases] == [("paid", None)]
