"""Sending one bill to Stripe: a resumable state machine (README "Bills, exactly once").

    created -> invoice_created -> item_added -> finalized -> paid

and what finance reads, `status`: unsent, sending, open, paid, payment_failed,
void, uncollectible, failed (reissued: see `tokens bill reissue`).

Exactly once, whatever fails or stalls:

- A run works on a bill only under a lease with a fencing token, new at every
  claim; every write names the token, so a run that stalled past its lease
  (a Stripe call hanging for minutes) writes nothing once another run claimed
  the bill, and stops.
- Each step has an idempotency key that is the same on every attempt
  (`tokens-bill-<public id>-<step>-<generation>`). A second run doing the step
  while the first one's request is still on its way gets the first one's
  object (or a 409 while it is in flight at Stripe), never a second object.
  The generation moves on only when Stripe answered the key with an error:
  Stripe keeps any response of an endpoint that started running, 4xx and 500
  included, for 24 h (docs.stripe.com/idempotency), so that key would only
  replay the error.
- An attempt after the first looks its invoice and item up by metadata
  (listing, which is consistent; search lags) before creating them, for when a
  key expired (24 h) or a new generation started after an unknown outcome.

Money (README "Billing with Stripe"):

- The invoice is created with `discounts=""` (else it inherits the customer's
  coupon: `params/_invoice_create_params.py`) and the item with
  `discountable=false` (items are discountable by default:
  `params/_invoice_item_create_params.py`). Before finalizing, the invoice's
  total must be the bill's amount, or the bill stops with `total_mismatch`.
- Payment method: charged automatically when the customer has a default
  payment method (`invoice_settings.default_payment_method` or
  `default_source`, what Stripe charges an invoice with); otherwise the invoice
  is sent (`send_invoice`, due in TOKENS_INVOICE_DAYS_UNTIL_DUE days).
- Finalizing does not pay. It turns on automatic collection (`auto_advance`),
  so Stripe charges the invoice by itself, and the reconciler learns the
  outcome by reading (3 requests a bill). Only an invoice still open
  `pay_after` after finalizing is paid by the reconciler itself. A decline
  keeps its decline code, waits 24 h (the command's clock) before another pay,
  and after 4 declines the reconciler stops paying (Stripe's own retries go on,
  and every run still reads the invoice).
- Finance's hand in Stripe ends a bill: void (also a draft deleted in the
  Dashboard), uncollectible, or a deleted customer (`failed`,
  `customer_deleted`); only `tokens bill reissue` bills those tokens again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import stripe
import structlog

from billing.rows import BillRow
from billing.send_collect import SendCollection
from billing.send_failures import SendFailures
from billing.send_records import (
    FINAL_STATUSES,
    LEASE_SECONDS,
    SQL,
    LeaseLost,
    Sent,
    StatusMoved,
)
from billing.stripe_objects import (
    carries,
    describe,
    has_payment_method,
    idempotency_key,
    metadata,
)
from db.queries import q
from runtime.config import Settings

# What the rest of billing imports from here; the parts live in billing/send_*.py.
__all__ = [
    "FINAL_STATUSES",
    "SQL",
    "Sent",
    "StripeSender",
    "carries",
    "sender_from_settings",
]

log = structlog.get_logger("tokens.billing")


class StripeSender(SendCollection, SendFailures):
    def __init__(
        self,
        pool: asyncpg.Pool,
        client: stripe.StripeClient | None,
        clock: Callable[[], datetime],
        *,
        lease_seconds: float = LEASE_SECONDS,
        days_until_due: int = 7,
        pay_after: timedelta = timedelta(hours=1),
    ) -> None:
        self.pool = pool
        self.client = client
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.days_until_due = days_until_due
        self.pay_after = pay_after

    async def send(self, bill_id: int, invoice: Any = None) -> Sent | None:
        """Advance one bill as far as Stripe lets it; None when another run holds it.
        `invoice`: the bill's invoice as this run just read it from Stripe, if it did."""
        row = await self.pool.fetchrow(q("claim_bill", SQL), bill_id, self.lease_seconds)
        if row is None:
            return None
        bill = BillRow.from_record(row)
        token = bill.lease_token
        try:
            return await self._advance(bill, invoice)
        except LeaseLost:
            log.warning("bill_lease_lost", bill_id=bill_id, team=bill.team_id)
            return None
        except StatusMoved as moved:
            log.info(
                "bill_status_moved", bill_id=bill_id, team=bill.team_id, status=moved.bill.status
            )
            return Sent(moved.bill)
        finally:
            await self.pool.execute(q("release_lease", SQL), bill_id, token)

    async def _advance(self, bill: BillRow, seen: Any) -> Sent:
        if self.client is None:
            return Sent(
                await self._fail(
                    bill,
                    "stripe_not_configured",
                    "STRIPE_API_KEY is not set: the bill is kept, unsent",
                    status="unsent",
                )
            )
        if bill.step == "created" and not bill.stripe_customer:
            return Sent(
                await self._fail(
                    bill,
                    "no_customer",
                    f"team {bill.team_id!r} has no Stripe customer: the bill is kept, unsent "
                    "(set one with `tokens team set ... --stripe-customer`)",
                ),
                new_failure=True,
            )
        client = self.client
        # The invoice as the last response of this attempt showed it (None: not seen).
        # `seen` was read before the claim (the run's listing): it may be minutes old.
        invoice: Any = seen
        fresh = False
        new_failure = False
        try:
            if bill.step == "created":
                bill = await self._invoice(client, bill)
                invoice = None
            if bill.step == "invoice_created":
                bill, invoice = await self._item(client, bill)
                fresh = invoice is not None
            if bill.step == "item_added":
                before = (bill.status, bill.error_code)
                bill, invoice = await self._finalize(client, bill, invoice if fresh else None)
                fresh = True
                if bill.status == "failed":
                    # A mismatch already reported waits for finance: not a new failure.
                    same = (bill.status, bill.error_code) == before
                    return Sent(bill, new_failure=not same, waiting=same)
            if bill.step == "finalized":
                bill, new_failure = await self._collect(client, bill, invoice, fresh=fresh)
        except stripe.StripeError as exc:
            return await self._stripe_error(client, bill, exc)
        log.info(
            "bill_sent" if bill.status == "paid" else "bill_progress",
            bill_id=bill.id,
            team=bill.team_id,
            step=bill.step,
            status=bill.status,
            invoice=bill.stripe_invoice_id,
            amount_cents=bill.amount_cents,
            tokens=bill.tokens,
        )
        return Sent(bill, new_failure)

    # -- steps ---------------------------------------------------------------

    async def _invoice(self, client: stripe.StripeClient, bill: BillRow) -> BillRow:
        """A draft invoice for the bill's customer, without the customer's discounts,
        collected automatically if the customer has a default payment method, else sent."""
        assert bill.stripe_customer is not None
        invoice = await self._find_invoice(client, bill) if bill.attempts > 1 else None
        customer: Any
        if invoice is None:
            invoice = await client.v1.invoices.create_async(
                {
                    "customer": bill.stripe_customer,
                    "collection_method": "charge_automatically",
                    # Finalized explicitly once its one item is on it; a draft left by
                    # a crash must not be finalized empty by Stripe meanwhile.
                    "auto_advance": False,
                    "pending_invoice_items_behavior": "exclude",
                    "currency": bill.currency,
                    # Without it the invoice inherits the customer's coupon.
                    "discounts": "",
                    "description": describe(bill),
                    "metadata": metadata(bill),
                    # The customer in the same response: its payment method decides.
                    "expand": ["customer"],
                },
                {"idempotency_key": idempotency_key(bill, "invoice")},
            )
            customer = invoice.customer
            if isinstance(customer, str):  # not expanded after all
                customer = await client.v1.customers.retrieve_async(customer)
        else:
            customer = await client.v1.customers.retrieve_async(bill.stripe_customer)
        method = invoice.collection_method
        if not has_payment_method(customer):
            method = "send_invoice"
            if invoice.collection_method != method:
                invoice = await client.v1.invoices.update_async(
                    invoice.id,
                    {"collection_method": method, "days_until_due": self.days_until_due},
                    {"idempotency_key": idempotency_key(bill, "send_invoice")},
                )
        return await self._record(
            bill,
            "invoice_created",
            "sending",
            invoice_id=invoice.id,
            stripe_status=invoice.status,
            method=method,
            created=invoice.created,
        )

    async def _item(self, client: stripe.StripeClient, bill: BillRow) -> tuple[BillRow, Any]:
        """-> (bill, the invoice as Stripe returned it with the new item, or None)."""
        assert bill.stripe_invoice_id is not None and bill.stripe_customer is not None
        item_id = await self._find_item(client, bill) if bill.attempts > 1 else None
        invoice = None
        if item_id is None:
            item = await client.v1.invoice_items.create_async(
                {
                    "customer": bill.stripe_customer,
                    "invoice": bill.stripe_invoice_id,
                    "amount": bill.amount_cents,
                    "currency": bill.currency,
                    "description": describe(bill),
                    "period": {
                        "start": int(bill.period_start.timestamp()),
                        # Stripe's period end is inclusive: the last second of the month.
                        "end": int(bill.period_end.timestamp()) - 1,
                    },
                    "discountable": False,
                    "metadata": metadata(bill),
                    # The invoice with its new total in the same response.
                    "expand": ["invoice"],
                },
                {"idempotency_key": idempotency_key(bill, "item")},
            )
            item_id, invoice = item.id, item.invoice
        bill = await self._record(bill, "item_added", "sending", item_id=item_id)
        return bill, invoice if isinstance(invoice, stripe.Invoice) else None

    async def _finalize(
        self, client: stripe.StripeClient, bill: BillRow, invoice: Any
    ) -> tuple[BillRow, Any]:
        """Check the total, then finalize with automatic collection on.
        `invoice`: as this attempt's item step just saw it (a draft), or None: read it,
        since an earlier attempt may have finalized it without hearing back."""
        assert bill.stripe_invoice_id is not None
        if invoice is None:
            invoice = await client.v1.invoices.retrieve_async(bill.stripe_invoice_id)
        if not carries(bill, invoice):
            if invoice.status == "void":
                return await self._fail(
                    bill, "invoice_void", "the invoice was voided at Stripe", status="void"
                ), invoice
            return await self._mismatch(bill, invoice), invoice
        if invoice.status == "draft":
            invoice = await client.v1.invoices.finalize_invoice_async(
                bill.stripe_invoice_id,
                # Automatic collection: Stripe charges it (or emails a send_invoice one).
                {"auto_advance": True},
                {"idempotency_key": idempotency_key(bill, "finalize")},
            )
        now = self.clock()
        charge = bill.collection_method != "send_invoice"
        bill = await self._record(
            bill,
            "finalized",
            "open",
            stripe_status=invoice.status,
            next_pay_at=now + self.pay_after if charge else None,
        )
        return bill, invoice


def sender_from_settings(
    pool: asyncpg.Pool, settings: Settings, clock: Callable[[], datetime]
) -> StripeSender:
    """The sender a `tokens` process uses: its Stripe client (paced) and policies."""
    from billing.stripe_client import make_stripe_client

    return StripeSender(
        pool,
        make_stripe_client(settings),
        clock,
        days_until_due=settings.invoice_days_until_due,
        pay_after=timedelta(seconds=settings.stripe_pay_after_seconds),
    )
