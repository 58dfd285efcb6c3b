"""Finance's view of bills: list, explain (the exact charges billed), reissue.

No Stripe here: these read and write Postgres only (cheap to import from the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from billing.rows import STATUSES, BillRow, bill_dict
from db.queries import q
from ledger import validate
from ledger.errors import BadInput, TokensError

SQL = "billing.sql"


class UnknownBill(TokensError):
    code = "unknown_bill"

    def __init__(self, bill_id: int) -> None:
        super().__init__(f"unknown bill {bill_id}")
        self.bill_id = bill_id


class ReissueRefused(TokensError):
    code = "reissue_refused"


def parse_bill_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"BILL must be a bill id (a whole number), not {text!r}") from None
    if value <= 0:
        raise BadInput(f"BILL must be a positive bill id, not {text!r}")
    if value >= 2**63:  # bills.id is a bigint: no bill has such an id
        raise BadInput(f"BILL {text!r} is too large to be a bill id")
    return value


def check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise BadInput(f"unknown bill status {status!r} (known: {', '.join(STATUSES)})")


def _bill(row: asyncpg.Record) -> dict[str, Any]:
    return bill_dict(BillRow.from_record(row), reissued_as=row.get("reissued_as"))


async def list_bills(
    pool: asyncpg.Pool, *, team: str | None, status: str | None
) -> list[dict[str, Any]]:
    check_status(status)
    if team is not None:
        validate.team_id(team)
    return [_bill(r) for r in await pool.fetch(q("list_bills", SQL), team, status)]


@dataclass
class Explained:
    bill: dict[str, Any]
    charges: list[dict[str, Any]]

    @property
    def by_action(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.charges:
            out[c["action"]] = out.get(c["action"], 0) + c["additional_tokens"]
        return dict(sorted(out.items()))

    def as_dict(self) -> dict[str, Any]:
        billed = sum(c["additional_tokens"] for c in self.charges)
        return {
            **self.bill,
            "by_action": self.by_action,
            "charges_tokens": billed,
            # False only for a bill made before charges were linked to bills and whose
            # charges could not be told apart (see migration 0003).
            "adds_up": billed == self.bill["tokens"],
            "charges": self.charges,
        }


async def explain_bill(pool: asyncpg.Pool, bill_id: int) -> Explained:
    row = await pool.fetchrow(q("show_bill", SQL), bill_id)
    if row is None:
        raise UnknownBill(bill_id)
    charges = [
        {
            "charge_id": c["charge_id"],
            "action": c["action"],
            "quantity": c["quantity"],
            "additional_tokens": c["additional_tokens"],
            "job_id": c["job_id"],
            "lead_id": c["lead_id"],
            "time": c["held_at"],
            "settled_at": c["settled_at"],
        }
        for c in await pool.fetch(q("bill_charges", SQL), bill_id)
    ]
    return Explained(_bill(row), charges)


# A reissue takes seconds; it holds the bill this long at most against reconcile runs.
REISSUE_LEASE_SECONDS = 120


async def reissue_bill(
    pool: asyncpg.Pool, bill_id: int, *, at: datetime, client: Any = None
) -> dict[str, Any]:
    """A new bill for the same tokens; the old one becomes `reissued`.

    README "Billing with Stripe", Reissue, says when a bill may be reissued.

    Never two live invoices for one bill's tokens: first the old invoice is made
    unable to collect at Stripe (a draft deleted, an open or uncollectible one voided).
    An invoice that carries the bill's amount and was paid, or that finance fixed (a
    draft) or finalized after fixing it, means there is nothing to reissue: the bill
    follows it (`reissued` false in the answer). `client`: a Stripe client, needed only
    when the old bill has an invoice that could still collect."""
    at = validate.moment(at)
    row = await pool.fetchrow(q("claim_for_reissue", SQL), bill_id, REISSUE_LEASE_SECONDS)
    if row is None:
        # Unknown, or held by a reconcile run: the function says which, changing nothing.
        return await _reissue(pool, bill_id, at, None)
    bill = BillRow.from_record(row)
    try:
        if _may_collect(bill):
            followed = await _settle_old_invoice(pool, client, bill)
            if followed is not None:
                return followed
        return await _reissue(pool, bill_id, at, bill.lease_token)
    finally:
        await pool.execute(q("release_lease", SQL), bill_id, bill.lease_token)


def _may_collect(bill: BillRow) -> bool:
    """A bill reissue may replace whose invoice could still collect money."""
    if bill.stripe_invoice_id is None or bill.error_code == "invoice_deleted":
        return False
    return bill.status == "uncollectible" or (
        bill.status == "failed" and bill.error_code in ("customer_deleted", "total_mismatch")
    )


async def _settle_old_invoice(
    pool: asyncpg.Pool, client: Any, bill: BillRow
) -> dict[str, Any] | None:
    """Make the old invoice unable to collect; or, when it carries the bill (paid, or
    fixed or finalized by finance), the bill follows it: -> the bill as it is now."""
    import stripe

    from billing.sender import carries

    invoice_id = bill.stripe_invoice_id
    if client is None:
        raise ReissueRefused(
            f"bill {bill.id} has invoice {invoice_id} at Stripe, which must be made "
            "uncollectible first: set STRIPE_API_KEY"
        )
    try:
        invoice = await client.v1.invoices.retrieve_async(invoice_id)
    except stripe.InvalidRequestError as exc:
        if exc.code == "resource_missing":
            return None  # deleted at Stripe: nothing can collect
        raise
    if invoice.status == "paid" and carries(bill, invoice):
        row = await pool.fetchrow(q("follow_paid", SQL), bill.id, bill.lease_token, bill.status)
        return _followed(row or bill, invoice_id, "paid")
    if invoice.status == "paid" and invoice.total:
        raise ReissueRefused(
            f"bill {bill.id}: invoice {invoice_id} was paid at {invoice.total} {bill.currency}, "
            f"not the bill's {bill.amount_cents}; a reissue would bill every token again: "
            "settle the difference in Stripe by hand"
        )
    fixed = carries(bill, invoice) and bill.error_code == "total_mismatch"
    if fixed and invoice.status in ("draft", "open"):
        # Finance fixed the draft (or finalized it fixed): the next run resumes on it.
        return _followed(bill, invoice_id, invoice.status)
    if invoice.status == "draft":
        await client.v1.invoices.delete_async(invoice_id)
    elif invoice.status in ("open", "uncollectible"):
        await client.v1.invoices.void_invoice_async(
            invoice_id, options={"idempotency_key": f"tokens-bill-{bill.public_id}-void"}
        )
    return None


def _followed(row: Any, invoice_id: str | None, invoice_status: str) -> dict[str, Any]:
    bill = row if isinstance(row, BillRow) else BillRow.from_record(row)
    return {
        **bill_dict(bill),
        "reissued": False,
        "follows": f"invoice {invoice_id} ({invoice_status} at Stripe)",
    }


async def _reissue(pool: asyncpg.Pool, bill_id: int, at: datetime, token: Any) -> dict[str, Any]:
    try:
        row = await pool.fetchrow(q("reissue_bill", SQL), bill_id, at, token)
    except asyncpg.PostgresError as exc:
        state = getattr(exc, "sqlstate", None)
        if state == "TK010":
            raise UnknownBill(bill_id) from None
        if state == "TK011":
            raise ReissueRefused(str(getattr(exc, "message", exc))) from None
        if isinstance(exc, asyncpg.UniqueViolationError):
            raise ReissueRefused(f"bill {bill_id} was reissued already") from None
        raise
    assert row is not None
    return {**bill_dict(BillRow.from_record(row)), "reissued": True}
