"""When a Stripe call fails, or its outcome is unknown: what the error does to the
bill, and the look-ups of what an earlier attempt may have made at Stripe."""

from __future__ import annotations

from typing import Any

import stripe
import structlog

from billing.rows import BillRow
from billing.send_records import (
    LOOKUP_PAGES,
    PAY_RETRY_WAIT,
    SendRecords,
    Sent,
)
from billing.stripe_objects import (
    _bill_tag,
    _code,
    _message,
)

log = structlog.get_logger("tokens.billing")


class SendFailures(SendRecords):
    # -- errors ----------------------------------------------------------------

    async def _stripe_error(
        self, client: stripe.StripeClient, bill: BillRow, exc: stripe.StripeError
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

    async def _customer_deleted(self, client: stripe.StripeClient, bill: BillRow) -> bool:
        if not bill.stripe_customer:
            return False
        try:
            customer = await client.v1.customers.retrieve_async(bill.stripe_customer)
        except stripe.StripeError:
            return False
        return bool(getattr(customer, "deleted", False))

    # -- look-ups after an attempt that may have reached Stripe ---------------

    async def _find_invoice(self, client: stripe.StripeClient, bill: BillRow) -> Any:
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

    async def _find_item(self, client: stripe.StripeClient, bill: BillRow) -> str | None:
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
