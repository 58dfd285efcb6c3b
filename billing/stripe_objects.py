"""How a bill appears at Stripe: its invoice's description and metadata, the
idempotency key of each step, whether a customer is charged automatically,
whether an invoice carries the bill, and how a Stripe error is recorded."""

from __future__ import annotations

from typing import Any

import stripe

from billing.rows import BillRow


def describe(bill: BillRow) -> str:
    kind = "threshold reached" if bill.reason == "threshold" else "billing month end"
    price = f"{bill.currency.upper()} {bill.unit_price.normalize()}"
    return (
        f"{bill.tokens:,} additional tokens x {price} "
        f"- billing month {bill.period_start:%Y-%m-%d} to {bill.period_end:%Y-%m-%d} ({kind})"
    )


def metadata(bill: BillRow) -> dict[str, str]:
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


def idempotency_key(bill: BillRow, step: str) -> str:
    """The same on every attempt of a step, until Stripe answers it with an error."""
    return f"tokens-bill-{bill.public_id}-{step}-{bill.key_gen}"


def has_payment_method(customer: Any) -> bool:
    settings = getattr(customer, "invoice_settings", None)
    default_pm = getattr(settings, "default_payment_method", None) if settings else None
    return bool(default_pm or getattr(customer, "default_source", None))


def customer_deleted(invoice: Any) -> bool:
    """The invoice's customer was deleted at Stripe (read expanded; an id alone says
    nothing)."""
    customer = getattr(invoice, "customer", None)
    return bool(customer is not None and not isinstance(customer, str)
                and getattr(customer, "deleted", False))  # fmt: skip


def carries(bill: BillRow, invoice: Any) -> bool:
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
