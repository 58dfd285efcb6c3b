"""Bills: a team's list and one bill with its explanation (README "Billing with Stripe"),
over billing/bills.py, the same functions as `tokens bills` and `tokens bill show`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from api import auth
from api.deps import AUTHED, Svc, Who, documented
from api.errors import ApiError
from api.schemas import BillExplained, BillsOut
from api.teams import TeamPath
from billing.bills import UnknownBill, explain_bill, list_bills
from ledger import shapes

router = APIRouter(tags=["bills"])

# Bills are money documents: the team's admins and the app's backend read them.
BILL_READERS = (auth.ADMIN, auth.SERVICE)


def plain(value: Any) -> Any:
    """JSON values: times in UTC ISO 8601, money as strings, nested as it comes."""
    if isinstance(value, datetime):
        return shapes.iso(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@router.get("/v1/teams/{team:path}/bills", responses=documented(*AUTHED))
async def team_bills(
    team: TeamPath,
    svc: Svc,
    who: Who,
    status: Annotated[str | None, Query(max_length=40, description="only this status")] = None,
) -> BillsOut:
    """The team's bills, oldest first (as `tokens bills --team TEAM --json`)."""
    auth.authorize(who, team, BILL_READERS)
    await svc.ledger.get_team(team)
    bills = await list_bills(svc.ledger.pool, team=team, status=status)
    return BillsOut.model_validate({"team": team, "bills": plain(bills)})


@router.get("/v1/bills/{bill_id}", responses=documented(*AUTHED))
async def get_bill(
    bill_id: Annotated[int, Path(ge=1, le=2**63 - 1)], svc: Svc, who: Who
) -> BillExplained:
    """One bill with the exact charges it billed and their sum by action (as `tokens bill
    show BILL --json`); only for its team."""
    # The role first, for any bill; then another team's bill answers as an unknown one.
    auth.require_role(who, BILL_READERS)
    unknown = ApiError(404, UnknownBill.code, str(UnknownBill(bill_id)))
    try:
        explained = await explain_bill(svc.ledger.pool, bill_id)
    except UnknownBill:
        raise unknown from None
    if not auth.may_see(who, explained.bill["team"]):
        raise unknown
    return BillExplained.model_validate(plain(explained.as_dict()))
