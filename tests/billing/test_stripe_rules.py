"""README "Billing with Stripe": bills against Stripe as it really behaves.

One test per way a real Stripe account differs from the happy path: each
failed on the code before the sender learned it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import stripe
from stripe._http_client import HTTPClient

from billing.bills import ReissueRefused, explain_bill, reissue_bill
from billing.reconcile import create_bills, reconcile
from billing.sender import StripeSender
from billing.stripe_client import Pacer, build_client, endpoint_of
from ledger.service import Ledger
from testing.stripe import DEFAULT_API_KEY, DEFAULT_BASE, StripeFake
from tests.billing.test_reconcile import billed_team, clocked, invoices_of, run, sender_for, spend
from tests.clock import at

T0 = "2026-01-20T01:00:00"


@pytest.fixture(autouse=True)
def no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """stripe-python sleeps between its own retries; the tests need not."""
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.0)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.0)


async def one_bill(ledger: Ledger, fake: StripeFake, **customer: Any) -> str:
    cus = fake.add_customer(**customer)
    await billed_team(ledger, fake, customer=cus)
    await spend(ledger, "acme", 250 + 5000, "2026-01-20", "a")
    return cus


async def bill_row(pool: asyncpg.Pool) -> asyncpg.Record:
    [row] = await pool.fetch("SELECT * FROM bills WHERE reissue_of IS NULL")
    return row


# ---------------------------------------------------------------- stalls


@pytest.mark.parametrize("reached", [False, True], ids=["stuck-on-the-way", "in-flight-at-stripe"])
async def test_a_reconciler_stalled_past_its_lease_never_makes_a_second_item(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake, reached: bool
) -> None:
    await one_bill(ledger, stripe_fake)
    hold_a = stripe_fake.hold_next("create_invoiceitem", reached=reached)
    # A's lease is test-shortened to nothing: any other run may claim the bill.
    stalled = asyncio.create_task(run(pool, sender_for(pool, stripe_fake, lease_seconds=0), T0))
    await hold_a.arrived.wait()
    # B takes the bill over; it is held at finalize (if it gets there), so that A's
    # stalled request lands while the invoice is still a draft that takes items.
    hold_b = stripe_fake.hold_next("finalize")
    other = asyncio.create_task(run(pool, sender_for(pool, stripe_fake), T0))
    b_at_finalize = asyncio.create_task(hold_b.arrived.wait())
    await asyncio.wait([other, b_at_finalize], return_when=asyncio.FIRST_COMPLETED)
    hold_a.release()
    first = await stalled
    hold_b.release()
    second = await other
    b_at_finalize.cancel()
    stripe_fake.clear_faults()
    # The stalled run's writes name a lease token that is no longer the bill's: it
    # stops without writing (it only reports the bill it created, as it was made).
    assert first.failed == 0 and [b.step for b in first.bills] == ["created"]
    if reached:  # B met A's request in flight (409): not a failure, the next run ends it
        assert second.failed == 0 and second.bills[0].status == "sending"
        third = await run(pool, sender_for(pool, stripe_fake), T0)
        assert third.bills[0].status == "paid"
    else:  # A's request, with B's key, got B's item back
        assert second.bills[0].status == "paid"
    [invoice] = invoices_of(stripe_fake, "acme")
    assert len(invoice["lines"]["data"]) == 1 and len(stripe_fake.invoice_items) == 1
    assert invoice["status"] == "paid" and invoice["amount_paid"] == 5000


async def test_every_write_of_a_run_checks_its_lease_token(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake)
    sender = sender_for(pool, stripe_fake)
    assert len(await create_bills(pool, team=None, at=at(T0))) == 1
    claimed = await pool.fetchrow(
        "UPDATE bills SET lease_token = gen_random_uuid() RETURNING lease_token"
    )
    assert claimed is not None
    for name, args in [
        ("record_step", ("invoice_created", "sending", "in_x", None, None, None, None)),
        ("release_lease", ()),
    ]:
        from db.queries import q

        extra = (at(T0), None, False, "sending") if name == "record_step" else ()
        result = await pool.execute(q(name, "billing.sql"), 1, None, *args, *extra)
        assert result.endswith(" 0"), (name, result)  # a stale token changes nothing
    row = await bill_row(pool)
    assert row["step"] == "created" and row["lease_token"] == claimed["lease_token"]
    assert sender.lease_seconds == 600


# ---------------------------------------------------------------- discounts


async def test_customer_coupons_never_discount_a_token_bill(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake, coupon_percent_off=20)
    report = await run(pool, sender_for(pool, stripe_fake), T0)
    assert report.bills[0].status == "paid"
    [invoice] = invoices_of(stripe_fake, "acme")
    assert invoice["discounts"] == [] and invoice["total_discount_amounts"] == []
    assert invoice["total"] == invoice["amount_paid"] == 5000
    [item] = stripe_fake.invoice_items.values()
    assert item["discountable"] is False


async def test_a_total_that_is_not_the_bill_stops_before_finalizing(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake)
    stripe_fake.lose_response_next("create_invoiceitem")
    await run(pool, sender_for(pool, stripe_fake), T0)
    [invoice] = invoices_of(stripe_fake, "acme")
    # Finance adds a line to the draft in the Dashboard (a coupon would not change it:
    # the item is not discountable).
    stripe_fake.discount_draft(invoice["id"], percent_off=10)
    extra = await stripe_fake.client().v1.invoice_items.create_async(
        {"invoice": invoice["id"], "amount": 700}
    )
    assert extra.amount == 700
    report = await run(pool, sender_for(pool, stripe_fake), T0)
    [bill] = report.bills
    assert (bill.status, bill.error_code, report.failed) == ("failed", "total_mismatch", 1)
    assert stripe_fake.invoices[invoice["id"]]["status"] == "draft"
    assert stripe_fake.calls("finalize") == []
    again = await run(pool, sender_for(pool, stripe_fake), T0)
    # Waits for finance: read again, not finalized, not reported as a new failure.
    assert again.bills == [] and again.failed == 0 and stripe_fake.calls("finalize") == []


# ---------------------------------------------------------------- finance acts in Stripe


async def test_a_voided_invoice_ends_its_bill_and_reissue_bills_the_tokens_again(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    cus = await one_bill(ledger, stripe_fake)
    slow = {"pay_after": timedelta(hours=1)}
    first = await run(pool, clocked(pool, stripe_fake, T0, **slow), T0)
    assert first.bills[0].status == "open"  # Stripe has not collected it yet
    [invoice] = invoices_of(stripe_fake, "acme")
    stripe_fake.void_invoice(invoice["id"])
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-20T03:00:00", **slow), T0)
    [bill] = report.bills
    assert bill.status == "void" and report.failed == 0
    assert stripe_fake.calls("pay") == []
    before = len(stripe_fake.requests)
    later = await run(pool, clocked(pool, stripe_fake, "2026-01-22T00:00:00"), T0)
    assert later.bills == [] and len(stripe_fake.requests) == before  # never retried

    assert bill.id is not None
    new = await reissue_bill(pool, bill.id, at=at("2026-01-22"))
    assert new["reissue_of"] == bill.id and new["tokens"] == bill.tokens
    sent = await run(pool, sender_for(pool, stripe_fake), "2026-01-22T00:00:00")
    assert [b.status for b in sent.bills] == ["paid"]
    paid = [i for i in invoices_of(stripe_fake, "acme") if i["status"] == "paid"]
    assert len(paid) == 1 and paid[0]["customer"] == cus and paid[0]["total"] == 5000
    old = await pool.fetchrow("SELECT status, stripe_invoice_status FROM bills WHERE id = $1", 1)
    assert old is not None and tuple(old) == ("reissued", "void")
    explained = await explain_bill(pool, new["bill_id"])
    assert sum(c["additional_tokens"] for c in explained.charges) == bill.tokens
    with pytest.raises(ReissueRefused, match="reissued already"):
        await reissue_bill(pool, bill.id, at=at("2026-01-22"))


async def test_uncollectible_is_kept_and_reissue_voids_it_first(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake)
    slow = {"pay_after": timedelta(hours=1)}
    await run(pool, clocked(pool, stripe_fake, T0, **slow), T0)
    [invoice] = invoices_of(stripe_fake, "acme")
    stripe_fake.mark_uncollectible(invoice["id"])
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-21T00:00:00"), T0)
    assert report.bills[0].status == "uncollectible" and stripe_fake.calls("pay") == []
    # Without Stripe the invoice cannot be made unable to collect: refused, nothing changed.
    with pytest.raises(ReissueRefused, match="STRIPE_API_KEY"):
        await reissue_bill(pool, 1, at=at("2026-01-21"))
    assert (await bill_row(pool))["status"] == "uncollectible"
    new = await reissue_bill(pool, 1, at=at("2026-01-21"), client=stripe_fake.client())
    assert new["reissue_of"] == 1 and new["reissued"] is True
    # An uncollectible invoice can still be paid at Stripe: it is voided first.
    assert stripe_fake.invoices[invoice["id"]]["status"] == "void"


async def test_a_draft_deleted_in_the_dashboard_makes_the_bill_void(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake)
    stripe_fake.fail_next("create_invoiceitem", status=500)
    await run(pool, sender_for(pool, stripe_fake), T0)
    [invoice] = invoices_of(stripe_fake, "acme")
    stripe_fake.delete_draft(invoice["id"])
    report = await run(pool, sender_for(pool, stripe_fake), T0)
    [bill] = report.bills
    assert (bill.status, bill.error_code) == ("void", "invoice_deleted")
    assert (await run(pool, sender_for(pool, stripe_fake), T0)).bills == []


async def test_a_deleted_customer_fails_the_bill_until_it_is_reissued(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    cus = await one_bill(ledger, stripe_fake)
    stripe_fake.delete_customer(cus)
    report = await run(pool, sender_for(pool, stripe_fake), T0)
    [bill] = report.bills
    assert (bill.status, bill.error_code, report.failed) == ("failed", "customer_deleted", 1)
    before = len(stripe_fake.requests)
    assert (await run(pool, sender_for(pool, stripe_fake), T0)).bills == []
    assert len(stripe_fake.requests) == before
    new_customer = stripe_fake.add_customer()
    await billed_team(ledger, stripe_fake, customer=new_customer)
    await reissue_bill(pool, 1, at=at(T0))
    report = await run(pool, sender_for(pool, stripe_fake), T0)
    assert [b.status for b in report.bills] == ["paid"]
    [invoice] = [i for i in stripe_fake.invoices.values() if i["status"] == "paid"]
    assert invoice["customer"] == new_customer


# ---------------------------------------------------------------- declines


async def test_declines_keep_their_code_wait_a_day_and_stop_after_four(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake, card_declines="insufficient_funds")
    start = at(T0)
    moments = [start + timedelta(hours=h) for h in (0, 1, 25, 26, 50, 75, 200)]
    pays = []
    for moment in moments:
        when = moment.isoformat().removesuffix("+00:00")
        report = await run(pool, clocked(pool, stripe_fake, when), when)
        pays.append(len(stripe_fake.calls("pay")))
        [bill] = report.bills
        assert bill.status == "payment_failed" and bill.decline_code == "insufficient_funds"
        assert report.failed == (1 if pays[-1] > (pays[-2] if len(pays) > 1 else 0) else 0)
    # paid at once, not within 24 h, then once a day, and never after the 4th decline
    assert pays == [1, 1, 2, 2, 3, 4, 4]
    row = await bill_row(pool)
    assert row["declines"] == 4 and row["next_pay_at"] is None


async def test_stripes_own_collection_is_recognized_without_another_pay(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    cus = await one_bill(ledger, stripe_fake, card_declines=True)
    await run(pool, clocked(pool, stripe_fake, T0), T0)
    assert len(stripe_fake.calls("pay")) == 1
    stripe_fake.set_card_declines(cus, False)
    stripe_fake.run_automatic_collection()  # Stripe's own retry, with the fixed card
    report = await run(pool, clocked(pool, stripe_fake, "2026-01-20T02:00:00"), T0)
    assert report.bills[0].status == "paid" and len(stripe_fake.calls("pay")) == 1


async def test_a_decline_by_stripes_own_collection_waits_a_day_before_our_pay(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake, card_declines="insufficient_funds")
    slow = {"pay_after": timedelta(hours=1)}
    first = await run(pool, clocked(pool, stripe_fake, T0, **slow), T0)
    assert first.bills[0].status == "open" and stripe_fake.calls("pay") == []
    stripe_fake.run_automatic_collection()  # Stripe tries the card itself: declined
    moments = ["2026-01-20T02:00:00", "2026-01-20T03:00:00", "2026-01-21T01:59:00"]
    for when in moments:  # past pay_after, but within a day of Stripe's decline
        report = await run(pool, clocked(pool, stripe_fake, when, **slow), T0)
        assert report.bills[0].status == "payment_failed"
        assert stripe_fake.calls("pay") == []
        assert report.failed == (1 if when == moments[0] else 0)  # a new decline, once
    row = await bill_row(pool)
    assert (row["declines"], row["next_pay_at"]) == (1, at("2026-01-21T02:00:00"))
    later = await run(pool, clocked(pool, stripe_fake, "2026-01-21T02:00:00", **slow), T0)
    assert len(stripe_fake.calls("pay")) == 1  # our own pay, a day after Stripe's
    assert later.bills[0].decline_code == "insufficient_funds"
    assert (await bill_row(pool))["declines"] == 2


async def test_three_requests_a_bill_when_stripe_collects(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake)
    slow = {"pay_after": timedelta(hours=1)}
    first = await run(pool, clocked(pool, stripe_fake, T0, **slow), T0)
    assert first.bills[0].status == "open"
    assert [r.path for r in stripe_fake.requests] == [
        "/v1/invoices",
        "/v1/invoiceitems",
        f"/v1/invoices/{first.bills[0].stripe_invoice_id}/finalize",
    ]
    stripe_fake.run_automatic_collection()
    second = await run(pool, clocked(pool, stripe_fake, "2026-01-20T01:05:00", **slow), T0)
    assert second.bills[0].status == "paid" and stripe_fake.calls("pay") == []


# ---------------------------------------------------------------- payment methods


@pytest.mark.parametrize("customer", [{"card_is_default": False}, {"payment_method": False}])
async def test_no_default_payment_method_sends_the_invoice(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake, customer: dict[str, Any]
) -> None:
    await one_bill(ledger, stripe_fake, **customer)
    sender = StripeSender(pool, stripe_fake.client(), lambda: at(T0), days_until_due=7)
    report = await run(pool, sender, T0)
    [bill] = report.bills
    assert (bill.status, bill.collection_method, report.failed) == ("open", "send_invoice", 0)
    [invoice] = invoices_of(stripe_fake, "acme")
    assert invoice["collection_method"] == "send_invoice" and invoice["status"] == "open"
    assert invoice["due_date"] is not None
    again = await run(pool, StripeSender(pool, stripe_fake.client(), lambda: at(T0)), T0)
    assert again.failed == 0 and stripe_fake.calls("pay") == []


# ---------------------------------------------------------------- rate limits


def paced(fake: StripeFake, **kw: Any) -> stripe.StripeClient:
    return build_client(
        DEFAULT_API_KEY,
        DEFAULT_BASE,
        max_rps=kw.pop("max_rps", None),
        max_total_rps=None,
        max_network_retries=0,
        backoff_base=0.0,
        **kw,
    )


@pytest.mark.parametrize("should_retry", [None, True])
async def test_a_429_is_retried_with_the_same_key_and_never_fails_a_bill(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake, should_retry: bool | None
) -> None:
    await one_bill(ledger, stripe_fake)
    for step in ("create_invoice", "create_invoiceitem", "finalize", "pay"):
        stripe_fake.rate_limit_next(step, should_retry=should_retry)
        stripe_fake.rate_limit_next(step, should_retry=should_retry)
    sender = StripeSender(pool, paced(stripe_fake), lambda: at(T0), pay_after=timedelta(0))
    report = await run(pool, sender, T0)
    assert report.failed == 0 and report.bills[0].status == "paid"
    assert len(stripe_fake.requests) == 12
    keys = [r.idempotency_key for r in stripe_fake.calls("create_invoice")]
    assert len(keys) == 3 and len(set(keys)) == 1


async def test_a_429_that_says_do_not_retry_leaves_the_bill_sending(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake)
    stripe_fake.rate_limit_next("create_invoiceitem", should_retry=False)
    sender = StripeSender(pool, paced(stripe_fake), lambda: at(T0))
    report = await run(pool, sender, T0)
    [bill] = report.bills
    assert (bill.status, bill.error_code, report.failed) == ("sending", "rate_limited", 0)
    report = await run(pool, StripeSender(pool, paced(stripe_fake), lambda: at(T0)), T0)
    assert report.bills[0].status in ("open", "paid") and len(stripe_fake.invoice_items) == 1


async def test_the_pacer_spaces_requests_per_endpoint_and_overall() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = Pacer(10, 15, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        await pacer.wait("POST /v1/invoices")
    await pacer.wait("POST /v1/invoiceitems")
    # 10/s per endpoint: 0.1 s apart; then the overall 15/s slot (1/15 s after the last)
    assert slept == pytest.approx([0.1, 0.2, 0.2 + 1 / 15])
    assert endpoint_of("POST", "https://api.stripe.com/v1/invoices/in_123/finalize") == (
        "POST /v1/invoices/{id}/finalize"
    )


async def test_the_fake_limits_each_endpoint(stripe_fake: StripeFake) -> None:
    stripe_fake.rate_limit_per_endpoint = 2
    client = stripe_fake.client()
    cus = stripe_fake.add_customer()
    await client.v1.invoices.list_async()
    await client.v1.invoices.list_async()
    with pytest.raises(stripe.RateLimitError):
        await client.v1.invoices.list_async()
    await client.v1.invoices.create_async({"customer": cus})  # another endpoint
    assert len(stripe_fake.rate_limited) == 1


# ---------------------------------------------------------------- details


async def test_zero_decimal_currencies_are_not_multiplied_by_100(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    await pool.execute("UPDATE plans SET currency = 'jpy', unit_price = 1")
    await spend(ledger, "acme", 250 + 70, "2026-01-20", "a")
    report = await run(pool, sender_for(pool, stripe_fake), "2026-02-15T00:00:00")
    [bill] = report.bills
    assert (bill.currency, bill.tokens, bill.amount_cents) == ("jpy", 70, 70)
    [invoice] = invoices_of(stripe_fake, "acme")
    assert invoice["currency"] == "jpy" and invoice["total"] == 70
    # Its words say the same currency as its amounts.
    assert invoice["metadata"]["currency"] == "jpy"
    [line] = invoice["lines"]["data"]
    assert "70 additional tokens x JPY 1 " in line["description"], line["description"]


async def test_a_price_below_a_cent_is_rounded_once_per_month_not_per_bill(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    await pool.execute("UPDATE plans SET unit_price = 0.015")
    await spend(ledger, "acme", 250 + 3_335, "2026-01-20", "a")  # 3,335 x 1.5 = 5,002.5 cents
    threshold = await run(pool, sender_for(pool, stripe_fake), "2026-01-20T01:00:00")
    await spend(ledger, "acme", 1, "2026-01-21", "b")
    month_end = await run(pool, sender_for(pool, stripe_fake), "2026-02-15T00:00:00")
    bills = [(b.reason, b.tokens, b.amount_cents) for b in threshold.bills + month_end.bills]
    # 3,336 tokens x 1.5 cents = 5,004 cents: rounded bill by bill it was 5,003 + 2 = 5,005.
    assert bills == [("threshold", 3_335, 5_003), ("month_end", 1, 1)]
    assert sorted(i["total"] for i in invoices_of(stripe_fake, "acme")) == [1, 5_003]


async def test_the_threshold_of_a_zero_decimal_currency_is_not_reached_100x_early(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    # 1 yen a token, threshold 5,000 yen: reached at 5,000 unbilled tokens, not at 50.
    await pool.execute("UPDATE plans SET currency = 'jpy', unit_price = 1")
    small, settled = await ledger.charge(
        "acme", "debounce", 250 + 100, key="s", at=at("2026-01-20")
    )
    assert small.additional_tokens == 100 and settled is not None
    assert (settled.unbilled_additional, settled.threshold_reached) == (100, False)
    _, more = await ledger.charge("acme", "debounce", 4900, key="b", at=at("2026-01-20"))
    assert more is not None
    assert (more.unbilled_additional, more.threshold_reached) == (5000, True)


async def test_each_charge_is_billed_by_exactly_one_bill_and_the_parts_add_up(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await billed_team(ledger, stripe_fake)
    held, _ = await ledger.charge("acme", "enrich", 600, key="e1", at=at("2026-01-20"))
    assert not held.refused
    await spend(ledger, "acme", 300, "2026-01-21", "d1")
    first = await run(pool, sender_for(pool, stripe_fake), "2026-01-22")  # threshold
    await spend(ledger, "acme", 40, "2026-02-01", "d2")
    await ledger.charge("acme", "ai_icebreaker", 2, key="i1", at=at("2026-02-02"))
    second = await run(pool, sender_for(pool, stripe_fake), "2026-02-15")  # month end
    [threshold] = first.created
    [month_end] = second.created
    assert threshold.id is not None and month_end.id is not None
    a = (await explain_bill(pool, threshold.id)).as_dict()
    b = (await explain_bill(pool, month_end.id)).as_dict()
    assert a["by_action"] == {"debounce": 300, "enrich": 5750} and a["adds_up"]
    assert sum(a["by_action"].values()) == threshold.tokens == 6050
    assert b["by_action"] == {"ai_icebreaker": 20, "debounce": 40} and b["adds_up"]
    ids = [c["charge_id"] for c in a["charges"] + b["charges"]]
    assert len(ids) == len(set(ids)) == 4
    assert await pool.fetchval("SELECT count(*) FROM bill_charges") == 4


async def test_a_run_out_of_time_defers_the_rest_to_the_next(
    ledger: Ledger, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    await one_bill(ledger, stripe_fake)
    report = await reconcile(
        pool, sender_for(pool, stripe_fake), team=None, at=at(T0), time_budget=0.0
    )
    assert report.deferred == 1 and stripe_fake.requests == []
    assert report.as_dict()["bills_deferred"] == 1
    report = await run(pool, sender_for(pool, stripe_fake), T0)
    assert report.bills[0].status == "paid"
