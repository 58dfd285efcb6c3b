"""Collecting a finalized invoice: reading Stripe's status, paying it when Stripe
has not, declines and the waits between pays."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import stripe
import structlog

from billing.rows import BillRow
from billing.send_records import (
    DECLINE_WAIT,
    FINAL_STATUSES,
    MAX_DECLINES,
    SQL,
    SendRecords,
)
from billing.stripe_objects import (
    _message,
    carries,
    customer_deleted,
    idempotency_key,
)
from db.queries import q

log = structlog.get_logger("tokens.billing")


class SendCollection(SendRecords):
    async def _collect(
        self, client: stripe.StripeClient, bill: BillRow, invoice: Any, *, fresh: bool
    ) -> tuple[BillRow, bool]:
        """A finalized invoice: learn its status; pay it only when Stripe has not and the
        decline policy allows. `fresh`: `invoice` was read after this run claimed the bill
        (else it is the run's listing, or None). -> (bill, a decline was received)."""
        assert bill.stripe_invoice_id is not None
        if invoice is None or invoice.id != bill.stripe_invoice_id:
            invoice, fresh = await self._read_invoice(client, bill.stripe_invoice_id), True
        now = self.clock()
        if invoice.status == "open" and not fresh and self._pay_due(bill, now):
            # Never pay on a stale reading: finance or Stripe may have acted since.
            invoice = await self._read_invoice(client, bill.stripe_invoice_id)
        stopped = await self._stopped(bill, invoice)
        if stopped is not None:
            return stopped
        # Stripe's own collection tried since we last looked, and the invoice is still
        # open: those attempts were declined. Count them before deciding to pay, so
        # that a card Stripe just failed is not charged again within the wait.
        tried = int(getattr(invoice, "attempt_count", 0) or 0)
        if invoice.status == "open" and tried > bill.declines:
            return await self._declined_at_stripe(bill, tried, now), True
        if invoice.status == "open" and self._pay_due(bill, now):
            attempt = await self.pool.fetchval(
                q("count_pay_attempt", SQL), bill.id, bill.lease_token, bill.status
            )
            if attempt is None:
                await self._moved(bill)
            try:
                invoice = await client.v1.invoices.pay_async(
                    bill.stripe_invoice_id,
                    options={"idempotency_key": idempotency_key(bill, "pay")},
                )
            except stripe.CardError as exc:
                return await self._decline(bill, exc, now), True
            except stripe.InvalidRequestError:
                # Refused (already paid, void, no payment method...): what the invoice is
                # now decides, not the error's words; Stripe gives "already paid" no code.
                current = await client.v1.invoices.retrieve_async(bill.stripe_invoice_id)
                if current.status == "open":
                    raise
                invoice = current
        status = FINAL_STATUSES.get(invoice.status)
        if status is None:  # still open
            status = "payment_failed" if bill.declines else "open"
        if status == bill.status and invoice.status == bill.stripe_invoice_status:
            return bill, False
        step = "paid" if status == "paid" else "finalized"
        return await self._record(
            bill,
            step,
            status,
            stripe_status=invoice.status,
            next_pay_at=bill.next_pay_at if status in ("open", "payment_failed") else None,
            release=step == "paid",
            keep_error=status == "payment_failed",
        ), False

    async def _stopped(self, bill: BillRow, invoice: Any) -> tuple[BillRow, bool] | None:
        """A finalized invoice that must not be collected as the bill: it does not carry
        the bill's amount, or nobody can pay it any more. -> (bill, a new failure)."""
        if not carries(bill, invoice):
            return await self._mismatch(bill, invoice), False
        if invoice.status == "open" and customer_deleted(invoice):
            # A sent invoice, or one the reconciler stopped paying after the last
            # decline, would otherwise stay open for ever.
            return await self._fail(
                bill,
                "customer_deleted",
                f"Stripe customer {bill.stripe_customer} was deleted: invoice "
                f"{bill.stripe_invoice_id} can no longer be paid; the bill stops until it is "
                f"reissued (`tokens bill reissue {bill.id}`)",
            ), True
        return None

    async def _read_invoice(self, client: stripe.StripeClient, invoice_id: str) -> Any:
        """The invoice now, with its customer (whether Stripe still has it)."""
        return await client.v1.invoices.retrieve_async(invoice_id, {"expand": ["customer"]})

    def _pay_due(self, bill: BillRow, now: datetime) -> bool:
        if bill.collection_method == "send_invoice" or bill.declines >= MAX_DECLINES:
            return False
        return bill.next_pay_at is None or bill.next_pay_at <= now

    async def _decline(self, bill: BillRow, exc: stripe.CardError, now: datetime) -> BillRow:
        error = exc.error
        code = (getattr(error, "decline_code", None) if error else None) or exc.code or "declined"
        declines = bill.declines + 1
        next_pay = now + DECLINE_WAIT if declines < MAX_DECLINES else None
        message = _message(exc)
        if next_pay is None:
            message += f" ({declines} declines: the reconciler stops paying; Stripe may retry)"
        log.warning(
            "bill_declined",
            bill_id=bill.id,
            team=bill.team_id,
            decline_code=code,
            declines=declines,
        )
        row = await self.pool.fetchrow(
            q("record_decline", SQL),
            bill.id,
            bill.lease_token,
            code,
            message,
            now,
            next_pay,
            bill.status,
            bill.key_gen,
        )
        return await self._written(row, bill)

    async def _declined_at_stripe(self, bill: BillRow, attempts: int, now: datetime) -> BillRow:
        """Stripe's automatic collection failed (`attempts` in all on the invoice): the
        bill is `payment_failed`, its declines are Stripe's count, and the next pay of
        ours waits out DECLINE_WAIT (none after MAX_DECLINES)."""
        next_pay = now + DECLINE_WAIT if attempts < MAX_DECLINES else None
        message = f"Stripe's automatic collection failed ({attempts} attempt(s) on the invoice)"
        if next_pay is None:
            message += ": the reconciler stops paying; Stripe may retry"
        log.warning(
            "bill_declined_at_stripe", bill_id=bill.id, team=bill.team_id, attempts=attempts
        )
        row = await self.pool.fetchrow(
            q("record_stripe_declines", SQL),
            bill.id,
            bill.lease_token,
            attempts,
            message,
            now,
            next_pay,
            bill.status,
        )
        return await self._written(row, bill)
