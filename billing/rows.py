"""What billing reads: a bill as a plain, frozen row built from its record, and the
JSON every reader of bills shows (command line, HTTP API, demo).

Like ledger/results.py: the SQLModel table classes of billing/models.py describe
the schema (tests diff them against the migrations); these carry data, so that
reading or sending a bill needs no SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, get_args
from uuid import UUID

from ledger.results import _Row

STEPS = ("created", "invoice_created", "item_added", "finalized", "paid")
# What finance reads of a bill; the API's schema uses the same type.
BillStatus = Literal[
    "unsent",
    "sending",
    "open",
    "paid",
    "payment_failed",
    "void",
    "uncollectible",
    "failed",
    "reissued",
]
STATUSES: tuple[str, ...] = get_args(BillStatus)
# Statuses a reconcile run still works on: sends, or reads Stripe's status of.
ACTIVE = ("unsent", "sending", "failed", "open", "payment_failed", "uncollectible")


@dataclass(frozen=True, slots=True)
class BillRow(_Row):
    """One bill: additional tokens of a billing month on their way to a Stripe invoice."""

    id: int
    public_id: UUID
    team_id: str
    period_start: datetime
    period_end: datetime
    reason: str
    tokens: int
    unit_price: Decimal
    amount_cents: int
    currency: str
    step: str
    stripe_customer: str | None
    stripe_invoice_id: str | None
    stripe_invoice_item_id: str | None
    stripe_invoice_status: str | None
    attempts: int
    pay_attempts: int
    last_error: str | None
    error_code: str | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    status: str
    lease_token: UUID | None  # the fencing token of the run that holds the bill
    key_gen: int  # the generation of its Stripe idempotency keys
    collection_method: str | None
    stripe_invoice_created: int | None
    decline_code: str | None
    declines: int
    last_declined_at: datetime | None
    next_pay_at: datetime | None
    reissue_of: int | None


def bill_dict(bill: BillRow, **extra: Any) -> dict[str, Any]:
    return {
        "bill_id": bill.id,
        "team": bill.team_id,
        "reason": bill.reason,
        "tokens": bill.tokens,
        "amount_cents": bill.amount_cents,
        "currency": bill.currency,
        "unit_price_usd": str(bill.unit_price.normalize()),
        "period_start": bill.period_start,
        "period_end": bill.period_end,
        "status": bill.status,
        "step": bill.step,
        "stripe_invoice_id": bill.stripe_invoice_id,
        "stripe_invoice_status": bill.stripe_invoice_status,
        "error": bill.last_error,
        "error_code": bill.error_code,
        "collection_method": bill.collection_method,
        "decline_code": bill.decline_code,
        "declines": bill.declines,
        "next_pay_at": bill.next_pay_at,
        "reissue_of": bill.reissue_of,
        "attempts": bill.attempts,
        "created_at": bill.created_at,
        **extra,
    }
