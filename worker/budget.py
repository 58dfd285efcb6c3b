"""What a jobs request would cost now, before it is queued (README "Budget control").

The request is read exactly as `enqueue` reads it (plan_jobs validates and
splits it), so a quote prices the jobs that would run: one charge per lead for
a lead list, one block of `quantity` generations otherwise.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger.budget import Quote
from ledger.service import Ledger
from worker.client import LEAD_ACTIONS, plan_jobs


async def quote_jobs(
    ledger: Ledger,
    team: str,
    action: str,
    *,
    quantity: int | None,
    payload: dict[str, Any] | None,
    member: str | None,
    at: datetime,
) -> Quote:
    """The ledger's quote of a jobs request (holding and queueing nothing); a bad
    request is refused as `enqueue` refuses it."""
    jobs = plan_jobs(ledger.catalog, team, action, quantity=quantity, payload=payload)
    if action in LEAD_ACTIONS:
        return await ledger.quote(team, action, leads=len(jobs), member=member, at=at)
    return await ledger.quote(team, action, quantity=len(jobs), member=member, at=at)


async def refusal_code(
    ledger: Ledger,
    team: str,
    action: str,
    *,
    quantity: int | None,
    payload: dict[str, Any] | None,
    member: str | None,
    at: datetime,
) -> tuple[str, Quote] | None:
    """None when every job of the request fits now; else why not, as a hold would
    say it: 'member_cap' when only the member's cap stops it (the team has room),
    'not_enough_tokens' otherwise. With the quote that did not fit."""
    request: dict[str, Any] = {"quantity": quantity, "payload": payload, "at": at}
    found = await quote_jobs(ledger, team, action, member=member, **request)
    if found.fits:
        return None
    if member is not None and (await quote_jobs(ledger, team, action, member=None, **request)).fits:
        return "member_cap", found
    return "not_enough_tokens", found
