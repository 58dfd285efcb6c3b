"""Sending one bill to Stripe: a resumable state machine.

    created -> invoice_created -> item_added -> finalized -> paid

Each step has its own Stripe idempotency key derived from the bill's public
id and attempt, and each Stripe id is written to the bill as soon as it is
known. A run that crashes or meets a Stripe error anywhere resumes at the
recorded step:

- within one attempt, stripe-python retries connection errors and 5xx with
  the same key, so Stripe does each step at most once;
- a later attempt (after a crash, a lost response, a saved 500, or Stripe's
  24 h key window) first looks the bill's invoice and invoice item up by
  metadata, by listing (consistent, unlike search), and creates only what
  is not there.

An attempt reads the invoice back from Stripe only where it has not just seen
it: right after Stripe took the item, the invoice is known to be a draft, and
the finalize response says whether it still needs paying (3 requests a bill
when finalizing charges it, 4 when an explicit pay is needed).

A lease on the bill row keeps two reconcilers from sending the same bill at
the same time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import stripe
import structlog

from billing.models import Bill
from ledger.queries import q

log = structlog.get_logger("tokens.billing")

SQL = "billing.sql"
# Longer than one attempt can last (Stripe timeouts x client retries).
LEASE_SECONDS = 600
LOOKUP_PAGES = 10  # newest 1,000 invoices of the customer


def describe(bill: Bill) -> str:
    kind = "threshold reached" if bill.reason == "threshold" else "billing month end"
    return (
        f"{bill.tokens:,} additional tokens x USD {bill.unit_price.normalize()} "
        f"- billing month {bill.period_start:%Y-%m-%d} to {bill.period_end:%Y-%m-%d} ({kind})"
    )


def metadata(bill: Bill) -> dict[str, str]:
    return {
        "tokens_bill": str(bill.public_id),
        "tokens_bill_id": str(bill.id),
        "team": bill.team_id,
        "tokens": str(bill.tokens),
        "unit_price_usd": str(bill.unit_price.normalize()),
        "billing_month": f"{bill.period_start.date()}/{bill.period_end.date()}",
        "reason": bill.reason,
    }


def idempotency_key(bill: Bill, step: str) -> str:
    """One key per bill, step and attempt. Within an attempt stripe-python's own
    retries reuse it. A new attempt gets a new key, because Stripe replays a saved
    500 for 24 h; that is safe only because every attempt after the first looks
    its objects up first (and the lease keeps attempts from overlapping)."""
    return f"tokens-bill-{bill.public_id}-{step}-{bill.attempts}"


class StripeSender:
    def __init__(
        self,
        pool: asyncpg.Pool,
        client: stripe.StripeClient | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.pool = pool
        self.client = client
        self.clock = clock

    async def send(self, bill_id: int) -> Bill | None:
        """Advance one bill as far as Stripe lets it. None when another run holds it."""
        row = await self.pool.fetchrow(q("claim_bill", SQL), bill_id, LEASE_SECONDS)
        if row is None:
            return None
        bill = Bill.model_validate(dict(row))
        done = False
        try:
            bill = await self._advance(bill)
            done = bill.step == "paid" and bill.lease_until is None  # released by record_step
            return bill
        finally:
            if not done:
                await self.pool.execute(q("release_lease", SQL), bill_id)

    async def _advance(self, bill: Bill) -> Bill:
        if self.client is None:
            return await self._error(
                bill, "stripe_not_configured", "STRIPE_API_KEY is not set: the bill is kept, unsent"
            )
        if not bill.stripe_customer:
            return await self._error(
                bill,
                "no_customer",
                f"team {bill.team_id!r} has no Stripe customer: the bill is kept, unsent "
                "(set one with `tokens team set ... --stripe-customer`)",
            )
        client = self.client
        # What this attempt itself learnt from Stripe, to skip re-reading it: whether
        # Stripe just took the invoice item (so the invoice is a draft), and the
        # invoice as the last response returned it.
        draft = False
        invoice: Any = None
        try:
            if bill.step == "created":
                bill = await self._invoice(client, bill)
            if bill.step == "invoice_created":
                bill, draft = await self._item(client, bill)
            if bill.step == "item_added":
                bill, invoice = await self._finalize(client, bill, draft=draft)
            if bill.step == "finalized":
                bill = await self._pay(client, bill, invoice)
        except stripe.StripeError as exc:
            return await self._error(bill, _code(exc), _message(exc))
        log.info(
            "bill_sent" if bill.step == "paid" else "bill_progress",
            bill_id=bill.id,
            team=bill.team_id,
            step=bill.step,
            invoice=bill.stripe_invoice_id,
            amount_cents=bill.amount_cents,
            tokens=bill.tokens,
        )
        return bill

    # -- steps ---------------------------------------------------------------

    async def _invoice(self, client: stripe.StripeClient, bill: Bill) -> Bill:
        assert bill.stripe_customer is not None
        invoice = await self._find_invoice(client, bill) if bill.attempts > 1 else None
        if invoice is None:
            invoice = await client.v1.invoices.create_async(
                {
                    "customer": bill.stripe_customer,
                    "collection_method": "charge_automatically",
                    # Finalized explicitly once its one item is on it; a draft left
                    # by a crash must not be finalized empty by Stripe meanwhile.
                    "auto_advance": False,
                    "pending_invoice_items_behavior": "exclude",
                    "currency": bill.currency,
                    "description": describe(bill),
                    "metadata": metadata(bill),
                },
                {"idempotency_key": idempotency_key(bill, "invoice")},
            )
        return await self._record(
            bill, "invoice_created", invoice_id=invoice.id, status=invoice.status
        )

    async def _item(self, client: stripe.StripeClient, bill: Bill) -> tuple[Bill, bool]:
        """-> (bill, True when Stripe took the item now: the invoice is a draft)."""
        assert bill.stripe_invoice_id is not None and bill.stripe_customer is not None
        item_id = await self._find_item(client, bill) if bill.attempts > 1 else None
        created = item_id is None
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
                        "end": int(bill.period_end.timestamp()),
                    },
                    "metadata": metadata(bill),
                },
                {"idempotency_key": idempotency_key(bill, "item")},
            )
            item_id = item.id
        return await self._record(bill, "item_added", item_id=item_id), created

    async def _finalize(
        self, client: stripe.StripeClient, bill: Bill, *, draft: bool
    ) -> tuple[Bill, Any]:
        """-> (bill, the invoice as Stripe returned it). `draft`: Stripe has just taken
        this attempt's item, which only a draft invoice accepts; nothing else finalizes
        it meanwhile (auto_advance is off until we finalize, and the lease keeps other
        runs out), so it need not be read first. Otherwise an earlier attempt may have
        finalized it without hearing back: read it, and finalize only a draft."""
        assert bill.stripe_invoice_id is not None
        invoice = None if draft else await client.v1.invoices.retrieve_async(bill.stripe_invoice_id)
        if invoice is None or invoice.status == "draft":
            invoice = await client.v1.invoices.finalize_invoice_async(
                bill.stripe_invoice_id,
                {"auto_advance": True},
                {"idempotency_key": idempotency_key(bill, "finalize")},
            )
        step = "paid" if invoice.status == "paid" else "finalized"
        return await self._record(bill, step, status=invoice.status), invoice

    async def _pay(self, client: stripe.StripeClient, bill: Bill, invoice: Any) -> Bill:
        """Charge now rather than when Stripe gets to it, about an hour later. `invoice`:
        as this attempt's finalize step just saw it, or None (read it)."""
        assert bill.stripe_invoice_id is not None
        if invoice is None:
            invoice = await client.v1.invoices.retrieve_async(bill.stripe_invoice_id)
        if invoice.status == "open":
            attempt = await self.pool.fetchval(q("count_pay_attempt", SQL), bill.id)
            # A decline is saved under its key: each payment attempt needs its own.
            try:
                invoice = await client.v1.invoices.pay_async(
                    bill.stripe_invoice_id,
                    options={"idempotency_key": f"tokens-bill-{bill.public_id}-pay-{attempt}"},
                )
            except stripe.CardError:
                await self._status(bill, "open")
                raise
        if invoice.status == "paid":
            return await self._record(bill, "paid", status="paid")
        return await self._status(bill, invoice.status)

    # -- look-ups after an attempt that may have reached Stripe ---------------

    async def _find_invoice(self, client: stripe.StripeClient, bill: Bill) -> Any:
        assert bill.stripe_customer is not None
        params: dict[str, Any] = {"customer": bill.stripe_customer, "limit": 100}
        for _ in range(LOOKUP_PAGES):
            page = await client.v1.invoices.list_async(params)  # type: ignore[arg-type]
            for invoice in page.data:
                if _bill_tag(invoice) == str(bill.public_id):
                    log.info("bill_invoice_found", bill_id=bill.id, invoice=invoice.id)
                    return invoice
            if not page.has_more or not page.data:
                return None
            params["starting_after"] = page.data[-1].id
        return None

    async def _find_item(self, client: stripe.StripeClient, bill: Bill) -> str | None:
        assert bill.stripe_invoice_id is not None
        lines = await client.v1.invoices.line_items.list_async(
            bill.stripe_invoice_id, {"limit": 100}
        )
        for line in lines.data:
            if _bill_tag(line) == str(bill.public_id):
                parent = line.parent
                details = parent.invoice_item_details if parent else None
                if details is not None:
                    return str(details.invoice_item)
        return None

    # -- recording -----------------------------------------------------------

    async def _record(
        self,
        bill: Bill,
        step: str,
        *,
        invoice_id: str | None = None,
        item_id: str | None = None,
        status: str | None = None,
    ) -> Bill:
        row = await self.pool.fetchrow(
            q("record_step", SQL), bill.id, step, invoice_id, item_id, status, self.clock()
        )
        return Bill.model_validate(dict(row)) if row else bill

    async def _status(self, bill: Bill, status: str | None) -> Bill:
        row = await self.pool.fetchrow(
            q("record_invoice_status", SQL), bill.id, status, self.clock()
        )
        return Bill.model_validate(dict(row)) if row else bill

    async def _error(self, bill: Bill, code: str, message: str) -> Bill:
        log.warning(
            "bill_not_sent",
            bill_id=bill.id,
            team=bill.team_id,
            step=bill.step,
            code=code,
            error=message,
            attempts=bill.attempts,
        )
        row = await self.pool.fetchrow(q("record_error", SQL), bill.id, message, code, self.clock())
        return Bill.model_validate(dict(row)) if row else bill


def _bill_tag(obj: Any) -> str | None:
    """The bill a Stripe object was made for, from its metadata."""
    meta = getattr(obj, "metadata", None)
    if not meta:
        return None
    value = meta.to_dict().get("tokens_bill") if hasattr(meta, "to_dict") else None
    return None if value is None else str(value)


def _code(exc: stripe.StripeError) -> str:
    if isinstance(exc, stripe.CardError):
        return "card_declined"
    if isinstance(exc, stripe.APIConnectionError):
        return "stripe_unreachable"
    return exc.code or type(exc).__name__


def _message(exc: stripe.StripeError) -> str:
    text = exc.user_message or str(exc) or type(exc).__name__
    if isinstance(exc, stripe.InvalidRequestError) and exc.code == "resource_missing":
        text = f"Stripe does not know this object: {text}"
    status = f"HTTP {exc.http_status}: " if exc.http_status else ""
    return " ".join(f"{status}{text}".split())
