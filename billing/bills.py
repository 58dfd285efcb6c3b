"""Finance's view of bills: list, explain (the exact charges billed), reissue.

No Stripe here: these read and write Postgres only (cheap to import from the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from billing.models import STATUSES, Bill, bill_dict
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
    data = dict(row)
    reissued_as = data.pop("reissued_as", None)
    return bill_dict(Bill.model_validate(data), reissued_as=reissued_as)


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


async def reissue_bill(pool: asyncpg.Pool, bill_id: int, *, at: datetime) -> dict[str, Any]:
    """A new bill for the same tokens; the old one becomes `reissued` (see README)."""
    at = validate.moment(at)
    try:
        row = await pool.fetchrow(q("reissue_bill", SQL), bill_id, at)
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
    return bill_dict(Bill.model_validate(dict(row)))
