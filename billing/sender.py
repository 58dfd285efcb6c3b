"""Sending one bill to Stripe: a resumable state machine (SPEC 4 and 4a).

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

Money (SPEC 4a):

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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

import asyncpg
import stripe
import structlog

from billing.models import Bill
from db.queries import q
from runtime.config import Settings

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

    def __init__(self, bill: Bill) -> None:
        super().__init__(bill.id)
        self.bill = bill


@dataclass
class Sent:
    """What one `send` did. `new_failure`: this run could not send the bill, or
    received a decline (`tokens reconcile` exits non-zero)."""

    bill: Bill
    new_failure: bool = False
    # Read and left as it was: a total mismatch still waiting for finance's fix.
    waiting: bool = False


def describe(bill: Bill) -> str:
    kind = "threshold reached" if bill.reason == "threshold" else "billing month end"
    price = f"{bill.currency.upper()} {bill.unit_price.normalize()}"
    return (
        f"{bill.tokens:,} additional tokens x {price} "
        f"- billing month {bill.period_start:%Y-%m-%d} to {bill.period_end:%Y-%m-%d} ({kind})"
    )


def metadata(bill: Bill) -> dict[str, str]:
    return {
        "tokens_bill": str(bill.public_id),
        "tokens_bill_id": str(bill.id),
        "team": bill.team_id,
        "tokens": str(bill.tokens),
        # The key keeps its name for the invoices already sent; the currency says what it is.
        "unit_price_usd": str(bill.unit_price.normalize()),
        "currency": bill.currency,
        "billing_month": f"{bill.period_start.date()}/{bill.period_end.date()}",
        "reason": bill.reason,
    }


def idempotency_key(bill: Bill, step: str) -> str:
    """The same on every attempt of a step, until Stripe answers it with an error."""
    return f"tokens-bill-{bill.public_id}-{step}-{bill.key_gen}"


def has_payment_method(customer: Any) -> bool:
    settings = getattr(customer, "invoice_settings", None)
    default_pm = getattr(settings, "default_payment_method", None) if settings else None
    return bool(default_pm or getattr(customer, "default_source", None))


class StripeSender:
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
        bill = Bill.model_validate(dict(row))
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

    async def _advance(self, bill: Bill, seen: Any) -> Sent:
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

    async def _invoice(self, client: stripe.StripeClient, bill: Bill) -> Bill:
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

    async def _item(self, client: stripe.StripeClient, bill: Bill) -> tuple[Bill, Any]:
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
        self, client: stripe.StripeClient, bill: Bill, invoice: Any
    ) -> tuple[Bill, Any]:
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

    async def _collect(
        self, client: stripe.StripeClient, bill: Bill, invoice: Any, *, fresh: bool
    ) -> tuple[Bill, bool]:
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

    async def _stopped(self, bill: Bill, invoice: Any) -> tuple[Bill, bool] | None:
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

    def _pay_due(self, bill: Bill, now: datetime) -> bool:
        if bill.collection_method == "send_invoice" or bill.declines >= MAX_DECLINES:
            return False
        return bill.next_pay_at is None or bill.next_pay_at <= now

    async def _decline(self, bill: Bill, exc: stripe.CardError, now: datetime) -> Bill:
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

    async def _declined_at_stripe(self, bill: Bill, attempts: int, now: datetime) -> Bill:
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

    # -- errors ----------------------------------------------------------------

    async def _stripe_error(
        self, client: stripe.StripeClient, bill: Bill, exc: stripe.StripeError
    ) -> Sent:
        code, message = _code(exc), _message(exc)
        sending = bill.step != "finalized"
        current = bill.status if bill.status not in ("unsent", "failed") else "sending"
        # An answer from Stripe is kept under its key: the next attempt takes new keys.
        # A 429 (rate limited) or 409 (key in flight elsewhere) is not kept; a
        # connection error has no answer, and the request may still reach Stripe.
        answered = exc.http_status is not None and exc.http_status not in (409, 429)
        if isinstance(exc, stripe.RateLimitError) or exc.http_status == 429:
            # Never a failed bill: the next run goes on where this one stopped.
            return Sent(await self._note(bill, "rate_limited", message, current, answered=False))
        if exc.http_status == 409:
            # Another run's request with this key is still in flight at Stripe.
            return Sent(await self._note(bill, code, message, current, answered=False))
        if (
            bill.step == "invoice_created"
            and isinstance(exc, stripe.InvalidRequestError)
            and exc.code == "invoice_not_editable"
            and bill.stripe_invoice_id
        ):
            # Finance finalized the draft before the bill's item was on it.
            try:
                invoice = await client.v1.invoices.retrieve_async(bill.stripe_invoice_id)
            except stripe.StripeError:
                invoice = None
            if invoice is not None and invoice.status != "draft":
                out = await self._mismatch(bill, invoice)
                return Sent(out, new_failure=out is not bill, waiting=out is bill)
        if isinstance(exc, stripe.InvalidRequestError) and exc.code == "resource_missing":
            if exc.param == "customer" or "customer" in (exc.user_message or ""):
                if await self._customer_deleted(client, bill):
                    return Sent(
                        await self._fail(
                            bill,
                            "customer_deleted",
                            f"Stripe customer {bill.stripe_customer} was deleted: the bill "
                            f"stops until it is reissued (`tokens bill reissue {bill.id}`)",
                        ),
                        new_failure=True,
                    )
            elif bill.stripe_invoice_id and bill.stripe_invoice_id in (exc.user_message or ""):
                return Sent(
                    await self._fail(
                        bill,
                        "invoice_deleted",
                        f"invoice {bill.stripe_invoice_id} was deleted at Stripe: the bill is "
                        f"void until it is reissued (`tokens bill reissue {bill.id}`)",
                        status="void",
                    ),
                    new_failure=True,
                )
        if sending:
            return Sent(await self._fail(bill, code, message, answered=answered), new_failure=True)
        # Finalized: the invoice is open at Stripe; a refused pay waits a day.
        refused = answered and exc.http_status is not None and exc.http_status < 500
        next_pay = self.clock() + PAY_RETRY_WAIT if refused else bill.next_pay_at
        return Sent(
            await self._note(bill, code, message, current, answered=answered, next_pay=next_pay),
            new_failure=refused,
        )

    async def _customer_deleted(self, client: stripe.StripeClient, bill: Bill) -> bool:
        if not bill.stripe_customer:
            return False
        try:
            customer = await client.v1.customers.retrieve_async(bill.stripe_customer)
        except stripe.StripeError:
            return False
        return bool(getattr(customer, "deleted", False))

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

    # -- recording (every write names the lease token) -------------------------

    async def _record(
        self,
        bill: Bill,
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
    ) -> Bill:
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
        bill: Bill,
        code: str,
        message: str,
        *,
        status: str = "failed",
        answered: bool = False,
    ) -> Bill:
        return await self._note(bill, code, message, status, answered=answered)

    async def _note(
        self,
        bill: Bill,
        code: str,
        message: str,
        status: str,
        *,
        answered: bool = False,
        next_pay: datetime | None = None,
    ) -> Bill:
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

    async def _written(self, row: asyncpg.Record | None, bill: Bill) -> Bill:
        """The bill as a write left it; nothing written: the lease or the status moved."""
        if row is None:
            await self._moved(bill)
        return Bill.model_validate(dict(row))

    async def _moved(self, bill: Bill) -> NoReturn:
        """A write changed nothing: another run holds the bill now, or a webhook changed
        its status since this run read it."""
        row = await self.pool.fetchrow(q("get_bill", SQL), bill.id)
        if row is None or row["lease_token"] != bill.lease_token:
            raise LeaseLost(bill.id)
        raise StatusMoved(Bill.model_validate(dict(row)))

    async def _mismatch(self, bill: Bill, invoice: Any) -> Bill:
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


def customer_deleted(invoice: Any) -> bool:
    """The invoice's customer was deleted at Stripe (read expanded; an id alone says
    nothing)."""
    customer = getattr(invoice, "customer", None)
    return bool(customer is not None and not isinstance(customer, str)
                and getattr(customer, "deleted", False))  # fmt: skip


def carries(bill: Bill, invoice: Any) -> bool:
    """The invoice bills exactly the bill's amount, undiscounted: the only invoice a bill
    may be finalized, paid or called paid on (an empty draft finance finalized is paid
    at 0 at once, with the bill's tokens never charged)."""
    discounts = sum(d.amount for d in (getattr(invoice, "total_discount_amounts", None) or []))
    return bool(invoice.total == bill.amount_cents and not discounts)


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
    if isinstance(exc, stripe.CardError) and exc.error is not None:
        decline = getattr(exc.error, "decline_code", None)
        if decline:
            text = f"{text} (decline code {decline})"
    status = f"HTTP {exc.http_status}: " if exc.http_status else ""
    return " ".join(f"{status}{text}".split())


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
