"""Bills while other actors move: finance and Stripe act between a reconcile run's
reading and its writes, webhooks land mid-run (README "Billing with Stripe")."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from stripe._http_client import HTTPClient

from billing.bills import ReissueRefused, reissue_bill
from billing.webhooks import WebhookHandler
from ledger.service import Ledger
from testing.stripe import StripeFake
from tests.billing.test_reconcile import billed_team, clocked, invoices_of, run, spend
from tests.clock import at

T0 = "2026-01-20T01:00:00"
SLOW = {"pay_after": timedelta(hours=1)}  # Stripe's own collection comes first
_events = itertools.count(1)


@pytest.fixture(autouse=True)
def no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.0)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.0)


async def webhook(ledger: Ledger, fake: StripeFake, kind: str, invoice: str) -> str:
    """Stripe delivers `kind` for `invoice`; the handler reads the invoice as it is now."""
    handler = WebhookHandler(ledger, fake.client(), lambda: datetime.now(UTC))
    event = {"id": f"evt_{next(_events)}", "type": kind, "data": {"object": {"id": invoice}}}
    return (await handler.receive(event)).result


async def teams_with_open_bills(ledger: Ledger, fake: StripeFake, n: int, **card: Any) -> None:
    """`n` teams, each with one bill finalized and not yet collected (the reconciler reads
    3 or more such invoices with one listing)."""
    for i in range(n):
        team = f"team{i}"
        await billed_team(ledger, fake, team=team, customer=fake.add_customer(**card))
        await spend(ledger, team, 250 + 5000, "2026-01-20", f"k{i}")
    first = await run(ledger.pool, clocked(ledger.pool, fake, T0, **SLOW), T0)
    assert [b.status for b in first.bills] == ["open"] * n


async def status(pool: asyncpg.Pool, team: str) -> str:
    value = await pool.fetchval(
        "SELECT status FROM bills WHERE team_id = $1 AND reissue_of IS NULL", team
    )
    return str(value)


async def test_an_invoice_marked_uncollectible_after_the_listing_is_never_paid(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await teams_with_open_bills(ledger, stripe_fake, 3)
    [invoice] = invoices_of(stripe_fake, "team0")

    async def finance() -> None:  # right after the run listed the invoices (all open)
        stripe_fake.mark_uncollectible(invoice["id"])
        await webhook(ledger, stripe_fake, "invoice.marked_uncollectible", invoice["id"])

    stripe_fake.after_next("list_invoices", finance)
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-20T03:00:00", **SLOW), T0)
    pays = [r.path for r in stripe_fake.calls("pay")]
    assert f"/v1/invoices/{invoice['id']}/pay" not in pays and len(pays) == 2
    assert stripe_fake.invoices[invoice["id"]]["status"] == "uncollectible"
    assert await status(pool, "team0") == "uncollectible"
    assert report.failed == 0


async def test_an_invoice_stripe_collected_after_the_listing_is_paid_not_a_failure(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await teams_with_open_bills(ledger, stripe_fake, 3)
    stripe_fake.after_next("list_invoices", stripe_fake.run_automatic_collection)
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-20T03:00:00", **SLOW), T0)
    assert stripe_fake.calls("pay") == []
    assert [b.status for b in report.bills] == ["paid"] * 3 and report.failed == 0


async def test_a_pay_answered_already_paid_makes_the_bill_paid_without_a_wait(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await teams_with_open_bills(ledger, stripe_fake, 1)
    [invoice] = invoices_of(stripe_fake, "team0")
    # Stripe collects it between the run's fresh reading and its pay request.
    stripe_fake.after_next("retrieve_invoice", stripe_fake.run_automatic_collection)
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-20T03:00:00", **SLOW), T0)
    assert len(stripe_fake.calls("pay")) == 1  # answered 400 "Invoice is already paid"
    [bill] = report.bills
    assert (bill.status, bill.error_code, bill.next_pay_at, report.failed) == (
        "paid",
        None,
        None,
        0,
    )
    assert stripe_fake.invoices[invoice["id"]]["amount_paid"] == 5000


async def test_a_webhooks_paid_is_never_turned_back_to_open_by_a_run(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    cus = stripe_fake.add_customer()
    await billed_team(ledger, stripe_fake, customer=cus)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")

    async def paid_meanwhile() -> None:  # finalized; the customer pays before we hear back
        [invoice] = invoices_of(stripe_fake, "acme")
        stripe_fake.pay_in_dashboard(invoice["id"])
        assert await webhook(ledger, stripe_fake, "invoice.paid", invoice["id"]) == "bill 1: paid"

    stripe_fake.after_next("finalize", paid_meanwhile)
    report = await run(pool, clocked(pool, stripe_fake, T0, **SLOW), T0)
    assert [b.status for b in report.bills] == ["paid"]
    assert await status(pool, "acme") == "paid"
    assert stripe_fake.calls("pay") == []


async def test_a_replayed_decline_is_not_a_second_decline_and_a_fixed_card_is_charged(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    cus = stripe_fake.add_customer(card_declines="insufficient_funds")
    await billed_team(ledger, stripe_fake, customer=cus)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    # Our first pay is declined at Stripe, and its answer is lost (saved under its key).
    stripe_fake.lose_response_next("pay")
    await run(pool, clocked(pool, stripe_fake, T0), T0)
    second = await run(pool, clocked(pool, stripe_fake, "2026-01-20T02:00:00"), T0)
    [bill] = second.bills
    assert (bill.status, bill.declines) == ("payment_failed", 1)  # learned from the invoice
    stripe_fake.set_card_declines(cus, False)  # the customer fixes the card
    later = await run(pool, clocked(pool, stripe_fake, "2026-01-21T03:00:00"), T0)
    [bill] = later.bills
    assert (bill.status, bill.declines, later.failed) == ("paid", 1, 0)
    keys = [r.idempotency_key for r in stripe_fake.calls("pay")]
    assert len(keys) == 2 and keys[0] != keys[1]  # a new generation after the decline


async def test_an_empty_draft_finance_finalized_at_zero_does_not_make_the_bill_paid(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    cus = stripe_fake.add_customer()
    await billed_team(ledger, stripe_fake, customer=cus)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    stripe_fake.fail_next("create_invoiceitem", status=500)
    await run(pool, clocked(pool, stripe_fake, T0), T0)
    [draft] = invoices_of(stripe_fake, "acme")
    stripe_fake.finalize_draft(draft["id"])  # empty: Stripe marks it paid at 0 at once
    assert stripe_fake.invoices[draft["id"]]["status"] == "paid"
    result = await webhook(ledger, stripe_fake, "invoice.paid", draft["id"])
    assert result == "bill 1: failed"
    row = await pool.fetchrow("SELECT * FROM bills WHERE id = 1")
    assert row is not None and (row["status"], row["error_code"]) == ("failed", "total_mismatch")
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-20T02:00:00"), T0)
    assert all(b.status == "failed" for b in report.bills)
    assert await status(pool, "acme") == "failed"
    # Nothing was collected: a reissue bills the tokens on a new invoice.
    new = await reissue_bill(pool, 1, at=at("2026-01-20T03:00:00"), client=stripe_fake.client())
    assert new["reissue_of"] == 1
    await run(pool, clocked(pool, stripe_fake, "2026-01-20T03:00:00"), T0)
    paid = [i["total"] for i in invoices_of(stripe_fake, "acme") if i["status"] == "paid"]
    assert sorted(paid) == [0, 5000]


async def test_a_paid_invoice_of_another_total_is_never_billed_again_by_a_reissue(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    cus = stripe_fake.add_customer()
    await billed_team(ledger, stripe_fake, customer=cus)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    stripe_fake.lose_response_next("create_invoiceitem")
    await run(pool, clocked(pool, stripe_fake, T0), T0)
    [invoice] = invoices_of(stripe_fake, "acme")
    [item] = stripe_fake.invoice_items
    stripe_fake.edit_draft_item(item, amount=4000)  # finance's own price
    stripe_fake.finalize_draft(invoice["id"])
    stripe_fake.pay_in_dashboard(invoice["id"])
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-20T02:00:00"), T0)
    [bill] = report.bills
    assert (bill.status, bill.error_code) == ("failed", "total_mismatch")
    assert bill.last_error is not None and "by hand" in bill.last_error
    with pytest.raises(ReissueRefused, match="paid at 4000"):
        await reissue_bill(pool, 1, at=at("2026-01-20T03:00:00"), client=stripe_fake.client())
    assert await pool.fetchval("SELECT count(*) FROM bills") == 1


# ---------------------------------------------------------------- reissue and total_mismatch


async def mismatched_draft(ledger: Ledger, pool: asyncpg.Pool, fake: StripeFake) -> str:
    """A bill stopped with total_mismatch: finance added a line to its draft."""
    await billed_team(ledger, fake, customer=fake.add_customer())
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    fake.lose_response_next("create_invoiceitem")
    await run(pool, clocked(pool, fake, T0), T0)
    [invoice] = invoices_of(fake, "acme")
    extra = await fake.client().v1.invoice_items.create_async(
        {"invoice": invoice["id"], "amount": 700}
    )
    report = await run(pool, clocked(pool, fake, T0), T0)
    [bill] = report.bills
    assert (bill.status, bill.error_code) == ("failed", "total_mismatch")
    assert bill.last_error is not None and "reissue and" not in bill.last_error
    return str(extra.id)


async def test_following_the_total_mismatch_message_never_bills_twice(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    extra = await mismatched_draft(ledger, pool, stripe_fake)
    [invoice] = invoices_of(stripe_fake, "acme")
    # Finance fixes the draft, finalizes it and the customer pays it...
    stripe_fake.edit_draft_item(extra, amount=None)
    stripe_fake.finalize_draft(invoice["id"])
    stripe_fake.pay_in_dashboard(invoice["id"])
    # ...then reissues the bill: it follows the paid invoice, no second invoice.
    out = await reissue_bill(pool, 1, at=at("2026-01-20T02:00:00"), client=stripe_fake.client())
    assert (out["reissued"], out["status"], out["bill_id"]) == (False, "paid", 1)
    await run(pool, clocked(pool, stripe_fake, "2026-01-20T03:00:00"), T0)
    assert [i["total"] for i in invoices_of(stripe_fake, "acme")] == [5000]
    assert await pool.fetchval("SELECT count(*) FROM bills") == 1


async def test_a_draft_finance_fixed_resumes_at_the_next_run(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    extra = await mismatched_draft(ledger, pool, stripe_fake)
    stripe_fake.edit_draft_item(extra, amount=None)
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-20T02:00:00"), T0)
    [bill] = report.bills
    assert (bill.status, bill.error_code, report.failed) == ("paid", None, 0)
    [invoice] = invoices_of(stripe_fake, "acme")
    assert (invoice["status"], invoice["amount_paid"]) == ("paid", 5000)


async def test_reissue_deletes_a_mismatched_draft_before_billing_again(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await mismatched_draft(ledger, pool, stripe_fake)
    [old] = invoices_of(stripe_fake, "acme")
    new = await reissue_bill(pool, 1, at=at("2026-01-20T02:00:00"), client=stripe_fake.client())
    assert new["reissued"] is True and old["id"] not in stripe_fake.invoices
    await run(pool, clocked(pool, stripe_fake, "2026-01-20T02:00:00"), T0)
    [invoice] = invoices_of(stripe_fake, "acme")
    assert (invoice["status"], invoice["total"]) == ("paid", 5000)


async def test_reissue_voids_an_invoice_finance_finalized_unfixed(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await mismatched_draft(ledger, pool, stripe_fake)
    [old] = invoices_of(stripe_fake, "acme")
    stripe_fake.finalize_draft(old["id"])  # 5,700 open: never paid by the reconciler
    await run(pool, clocked(pool, stripe_fake, "2026-01-21T02:00:00"), T0)
    assert stripe_fake.calls("pay") == [] and await status(pool, "acme") == "failed"
    await reissue_bill(pool, 1, at=at("2026-01-21T03:00:00"), client=stripe_fake.client())
    assert stripe_fake.invoices[old["id"]]["status"] == "void"
    await run(pool, clocked(pool, stripe_fake, "2026-01-21T03:00:00"), T0)
    live = [i["total"] for i in invoices_of(stripe_fake, "acme") if i["status"] != "void"]
    assert live == [5000]


# ---------------------------------------------------------------- prices and rounding


async def test_a_price_change_never_reprices_spent_unbilled_tokens(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    await spend(ledger, "acme", 250 + 300, "2026-01-20", "a")  # 300 tokens at USD 0.01
    await pool.execute("UPDATE plans SET unit_price = 0.02")  # a new catalog is loaded
    await spend(ledger, "acme", 100, "2026-02-01", "b")  # same billing month: old price
    await spend(ledger, "acme", 250 + 50, "2026-02-20", "c")  # next month: new price
    jan = await run(pool, clocked(pool, stripe_fake, "2026-02-15T00:00:00"), "2026-02-15")
    feb = await run(pool, clocked(pool, stripe_fake, "2026-03-15T00:00:00"), "2026-03-15")
    bills = [
        (b.tokens, str(b.unit_price.normalize()), b.amount_cents) for b in jan.bills + feb.bills
    ]
    assert bills == [(400, "0.01", 400), (50, "0.02", 100)]
    section = await ledger.billing("acme", at=at("2026-02-20"))
    assert str(section.unit_price) == "0.02"  # the open month, opened after the change


async def test_a_remainder_worth_under_half_a_cent_is_billed_by_a_zero_bill_never_sent(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await pool.execute("UPDATE plans SET unit_price = 0.001")  # a tenth of a cent a token
    await billed_team(ledger, stripe_fake)
    await spend(ledger, "acme", 250 + 4, "2026-01-20", "a")  # 0.4 cent
    report = await run(pool, clocked(pool, stripe_fake, "2026-02-15T00:00:00"), "2026-02-15")
    [bill] = report.bills
    assert (bill.tokens, bill.amount_cents, bill.status, bill.stripe_invoice_id) == (
        4,
        0,
        "paid",
        None,
    )
    assert stripe_fake.requests == [] and report.failed == 0
    section = await ledger.billing("acme", at=at("2026-01-20"))
    assert section.additional_billed == section.additional_spent == 4
    assert (await run(pool, clocked(pool, stripe_fake, "2026-02-16"), "2026-02-16")).bills == []


@pytest.mark.parametrize(
    ("first", "finance", "second", "final"),
    [
        ("invoice.payment_failed", "pay_in_dashboard", "invoice.paid", "paid"),
        ("invoice.payment_failed", "void_invoice", "invoice.voided", "void"),
        ("invoice.marked_uncollectible", "pay_in_dashboard", "invoice.paid", "paid"),
    ],
)
async def test_a_webhook_reading_older_than_another_never_leaves_paid_or_void(
    ledger: Ledger,
    pool: asyncpg.Pool,
    stripe_fake: StripeFake,
    first: str,
    finance: str,
    second: str,
    final: str,
) -> None:
    await teams_with_open_bills(ledger, stripe_fake, 1)
    [invoice] = invoices_of(stripe_fake, "team0")
    if first == "invoice.marked_uncollectible":
        stripe_fake.mark_uncollectible(invoice["id"])

    async def meanwhile() -> None:  # a second delivery reads later and is handled first
        getattr(stripe_fake, finance)(invoice["id"])
        assert await webhook(ledger, stripe_fake, second, invoice["id"]) == f"bill 1: {final}"

    # The first delivery read the invoice (open, or uncollectible) before finance acted.
    stripe_fake.after_next("retrieve_invoice", meanwhile)
    await webhook(ledger, stripe_fake, first, invoice["id"])
    assert stripe_fake.invoices[invoice["id"]]["status"] == final
    assert await status(pool, "team0") == final
    row = await pool.fetchrow("SELECT stripe_invoice_status, error_code FROM bills")
    assert row is not None and row["stripe_invoice_status"] == final


async def test_an_uncollectible_bill_whose_invoice_is_paid_later_becomes_paid(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await teams_with_open_bills(ledger, stripe_fake, 1)
    [invoice] = invoices_of(stripe_fake, "team0")
    stripe_fake.mark_uncollectible(invoice["id"])
    await webhook(ledger, stripe_fake, "invoice.marked_uncollectible", invoice["id"])
    assert await status(pool, "team0") == "uncollectible"
    stripe_fake.pay_in_dashboard(invoice["id"])
    assert await webhook(ledger, stripe_fake, "invoice.paid", invoice["id"]) == "bill 1: paid"
    assert await status(pool, "team0") == "paid"


@pytest.mark.parametrize("bills", [1, 3], ids=["read-alone", "read-by-the-listing"])
async def test_a_sent_invoice_whose_customer_was_deleted_fails_its_bill(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake, bills: int
) -> None:
    # Customers without a payment method: the invoices are sent, never paid by a run.
    await teams_with_open_bills(ledger, stripe_fake, bills, payment_method=False)
    customers = {i["customer"] for i in stripe_fake.invoices.values()}
    for customer in customers:
        stripe_fake.delete_customer(customer)
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-21T01:00:00", **SLOW), T0)
    assert [(b.status, b.error_code) for b in report.bills] == [
        ("failed", "customer_deleted")
    ] * bills
    assert report.failed == bills
    # Stripe leaves the invoices open (nobody can pay them); the bills wait for a reissue.
    assert {i["status"] for i in stripe_fake.invoices.values()} == {"open"}
    assert stripe_fake.calls("pay") == []
    again = await run(pool, clocked(pool, stripe_fake, "2026-01-22T01:00:00", **SLOW), T0)
    assert again.bills == [] and again.failed == 0


async def test_a_customer_deleted_after_the_last_decline_fails_the_bill(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await teams_with_open_bills(ledger, stripe_fake, 1, card_declines=True)
    [invoice] = invoices_of(stripe_fake, "team0")
    for hours in (3, 28, 53, 78):  # four declines a day apart: the reconciler stops paying
        when = (at(T0) + timedelta(hours=hours)).isoformat().removesuffix("+00:00")
        await run(pool, clocked(pool, stripe_fake, when, **SLOW), T0)
    row = await pool.fetchrow("SELECT status, declines, next_pay_at FROM bills")
    assert row is not None and tuple(row) == ("payment_failed", 4, None)
    stripe_fake.delete_customer(invoice["customer"])
    pays = len(stripe_fake.calls("pay"))
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-25T01:00:00", **SLOW), T0)
    assert [(b.status, b.error_code) for b in report.bills] == [("failed", "customer_deleted")]
    assert len(stripe_fake.calls("pay")) == pays and report.failed == 1
