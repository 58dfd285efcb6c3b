"""What every part of the Stripe sender shares: its policies, the outcome of a send,
and its writes to the bill (each names the lease token of the run's claim)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

import asyncpg
import stripe
import structlog

from billing.rows import BillRow
from db.queries import q

log = structlog.get_logger("tokens.billing")

SQL = "billing.sql"
# A stalled run cannot double bill (fencing tokens, reused keys): the lease only
# keeps two runs from working on one bill at once in the normal case.
LEASE_SECONDS = 600
LOOKUP_PAGES = 10  # newest 1,000 invoices of the customer
MAX_DECLINES = 4
DECLINE_WAIT = timedelta(hours=24)
# A pay refused for another reason (no payment method any more...): try again later.
PAY_RETRY_WAIT = timedelta(hours=24)
# Failed for good: only `tokens bill reissue` bills these tokens again.
TERMINAL_ERRORS = ("customer_deleted", "total_mismatch")
# Stripe's invoice status -> the bill's status, for a finalized invoice.
FINAL_STATUSES = {"paid": "paid", "void": "void", "uncollectible": "uncollectible"}


class LeaseLost(Exception):
    """Another run claimed the bill since this run did: stop, write nothing."""


class StatusMoved(Exception):
    """A webhook changed the bill's status since this run read it: its news wins, the
    run stops with the bill as it is now."""

    def __init__(self, bill: BillRow) -> None:
        super().__init__(bill.id)
        self.bill = bill


@dataclass
class Sent:
    """What one `send` did. `new_failure`: this run could not send the bill, or
    received a decline (`tokens reconcile` exits non-zero)."""

    bill: BillRow
    new_failure: bool = False
    # Read and left as it was: a total mismatch still waiting for finance's fix.
    waiting: bool = False


class SendRecords:
    """The sender's settings (StripeSender sets them) and its writes to the bill."""

    pool: asyncpg.Pool
    client: stripe.StripeClient | None
    clock: Callable[[], datetime]
    lease_seconds: float
    days_until_due: int
    pay_after: timedelta

    # -- recording (every write names the lease token) -------------------------

    async def _record(
        self,
        bill: BillRow,
        step: str,
        status: str,
        *,
        invoice_id: str | None = None,
        item_id: str | None = None,
        stripe_status: str | None = None,
        method: str | None = None,
        created: int | None = None,
        next_pay_at: datetime | None = None,
        release: bool = False,
        keep_error: bool = False,
    ) -> BillRow:
        row = await self.pool.fetchrow(
            q("record_step", SQL),
            bill.id,
            bill.lease_token,
            step,
            status,
            invoice_id,
            item_id,
            stripe_status,
            method,
            created,
            self.clock(),
            next_pay_at,
            release,
            bill.status,
        )
        out = await self._written(row, bill)
        if keep_error and bill.last_error:
            out = await self._note(out, bill.error_code or "", bill.last_error, status)
        return out

    async def _fail(
        self,
        bill: BillRow,
        code: str,
        message: str,
        *,
        status: str = "failed",
        answered: bool = False,
    ) -> BillRow:
        return await self._note(bill, code, message, status, answered=answered)

    async def _note(
        self,
        bill: BillRow,
        code: str,
        message: str,
        status: str,
        *,
        answered: bool = False,
        next_pay: datetime | None = None,
    ) -> BillRow:
        log.warning(
            "bill_not_sent" if status in ("failed", "unsent", "void") else "bill_error",
            bill_id=bill.id,
            team=bill.team_id,
            step=bill.step,
            status=status,
            code=code,
            error=message,
            attempts=bill.attempts,
        )
        row = await self.pool.fetchrow(
            q("record_error", SQL),
            bill.id,
            bill.lease_token,
            message,
            code,
            self.clock(),
            status,
            answered,
            next_pay if next_pay is not None else bill.next_pay_at,
            bill.status,
        )
        return await self._written(row, bill)

    async def _written(self, row: asyncpg.Record | None, bill: BillRow) -> BillRow:
        """The bill as a write left it; nothing written: the lease or the status moved."""
        if row is None:
            await self._moved(bill)
        return BillRow.from_record(row)

    async def _moved(self, bill: BillRow) -> NoReturn:
        """A write changed nothing: another run holds the bill now, or a webhook changed
        its status since this run read it."""
        row = await self.pool.fetchrow(q("get_bill", SQL), bill.id)
        if row is None or row["lease_token"] != bill.lease_token:
            raise LeaseLost(bill.id)
        raise StatusMoved(BillRow.from_record(row))

    async def _mismatch(self, bill: BillRow, invoice: Any) -> BillRow:
        """The invoice does not carry the bill's amount (finance edited the draft, or
        finalized it before the bill's item was on it): the bill stops with
        `total_mismatch`, nothing more is finalized or paid. Already so: unchanged, so
        that a run reading it again reports nothing new."""
        discounts = sum(d.amount for d in (invoice.total_discount_amounts or []))
        if invoice.status == "draft":
            state = "not finalized"
            advice = (
                "fix the draft in Stripe (remove what was added, or set the item back to "
                f"{bill.amount_cents}) and the next reconcile finalizes it; or run "
                f"`tokens bill reissue {bill.id}`, which deletes this draft and bills the "
                "tokens on a new invoice"
            )
        elif invoice.status == "paid" and invoice.total:
            state = "paid at Stripe"
            advice = (
                "settle the difference in Stripe by hand (a reissue would bill every token again)"
            )
        else:
            state = f"{invoice.status} at Stripe"
            advice = (
                f"nothing was collected: `tokens bill reissue {bill.id}` bills the tokens on "
                "a new invoice"
                if invoice.status == "paid"
                else f"`tokens bill reissue {bill.id}` voids it and bills the tokens on a new "
                "invoice"
            )
        message = (
            f"invoice {invoice.id} totals {invoice.total} {bill.currency} "
            f"(discounts {discounts}) but the bill is {bill.amount_cents} ({state}); {advice}"
        )
        if bill.error_code == "total_mismatch" and bill.last_error == message:
            return bill
        return await self._fail(bill, "total_mismatch", message)
