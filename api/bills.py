"""Bills: a team's list and one bill. Thin over billing/ (issue 11 extends what a bill says)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from api import auth
from api.deps import AUTHED, Svc, Who, documented
from api.errors import ApiError
from api.schemas import BillOut, BillsOut
from api.teams import TeamPath
from billing.models import Bill
from billing.reconcile import bill_dict, team_bills
from cli import render
from ledger.queries import q

router = APIRouter(tags=["bills"])

# Bills are money documents: the team's admins and the app's backend read them.
BILL_READERS = (auth.ADMIN, auth.SERVICE)


def bill_json(bill: Bill) -> dict[str, Any]:
    """billing.reconcile.bill_dict, with times in UTC ISO 8601 and money as strings."""
    out = bill_dict(bill) | {"created_at": bill.created_at}
    return {k: _plain(v) for k, v in out.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return render.iso(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


@router.get(
    "/v1/teams/{team}/bills",
    response_model=None,
    responses={200: {"model": BillsOut}, **documented(*AUTHED)},
)
async def list_bills(team: TeamPath, svc: Svc, who: Who) -> JSONResponse:
    """The team's bills, oldest first."""
    auth.authorize(who, team, BILL_READERS)
    await svc.ledger.get_team(team)
    bills = await team_bills(svc.ledger.pool, team)
    return JSONResponse({"team": team, "bills": [bill_json(b) for b in bills]})


@router.get(
    "/v1/bills/{bill_id}",
    response_model=None,
    responses={200: {"model": BillOut}, **documented(*AUTHED)},
)
async def get_bill(
    bill_id: Annotated[int, Path(ge=1, le=2**63 - 1)], svc: Svc, who: Who
) -> JSONResponse:
    """One bill; only for its team."""
    row = await svc.ledger.pool.fetchrow(q("get_bill", "billing.sql"), bill_id)
    if row is None:
        raise ApiError(404, "unknown_bill", f"unknown bill {bill_id}")
    bill = Bill.model_validate(dict(row))
    auth.authorize(who, bill.team_id, BILL_READERS)
    return JSONResponse(bill_json(bill))
