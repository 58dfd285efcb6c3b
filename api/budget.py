"""Budget control over HTTP: a quote before a job, members' monthly caps, and the
check behind a jobs request's `only_if_all_fit` (README "Budget control")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api import auth
from api.deps import AUTHED, Svc, Who, documented
from api.errors import ApiError
from api.schemas import JobsIn, MemberCapIn, MemberCapOut, QuoteOut
from api.teams import READERS, TeamPath
from ledger import shapes
from worker.budget import quote_jobs, refusal_code

router = APIRouter(prefix="/v1/teams", tags=["budget"])

MemberPath = Annotated[str, Path(min_length=1, max_length=255, description="the member (a sub)")]


def member_of(who: auth.Caller, body: JobsIn) -> str | None:
    """Who launches a request's jobs: a member's or admin's own `sub`; for the app's
    backend (`service`), the member it names, if any. Nobody but the service may name
    another member: a member could otherwise spend under someone else's cap."""
    if who.role == auth.SERVICE:
        return body.member
    if body.member is not None and body.member != who.sub:
        raise ApiError(
            403,
            "forbidden_member",
            "only a service token may name the member; this token's jobs are its sub's",
        )
    return who.sub


@router.post("/{team:path}/quote", responses=documented(*AUTHED))
async def quote(team: TeamPath, body: JobsIn, svc: Svc, who: Who) -> QuoteOut:
    """What a jobs request (the same body) would cost now: tokens, their free and additional
    parts, the cost, how many leads fit. Nothing is held or queued."""
    auth.authorize(who, team, READERS)
    member = member_of(who, body)
    found = await quote_jobs(
        svc.ledger,
        team,
        body.action,
        quantity=body.quantity,
        payload=body.payload,
        member=member,
        at=svc.clock(),
    )
    return QuoteOut.model_validate(shapes.quote_dict(found, member))


async def require_all_fit(svc: Svc, team: str, body: JobsIn, member: str | None) -> None:
    """A 409 unless every job of the request fits now (`only_if_all_fit`), with the code a
    hold would give: 'member_cap' when only the member's cap stops it."""
    refused = await refusal_code(
        svc.ledger,
        team,
        body.action,
        quantity=body.quantity,
        payload=body.payload,
        member=member,
        at=svc.clock(),
    )
    if refused is None:
        return
    code, found = refused
    if found.leads is not None:
        what = f"{found.leads_that_fit} of {found.leads} leads fit now"
    else:
        what = f"its {found.tokens} tokens do not fit now"
    why = f"over {member!r}'s monthly cap" if code == "member_cap" else "not enough tokens"
    raise ApiError(409, code, f"{why}: {what}; nothing was queued (only_if_all_fit)")


@router.put("/{team:path}/members/{member}/cap", responses=documented(*AUTHED))
async def set_member_cap(
    team: TeamPath, member: MemberPath, body: MemberCapIn, svc: Svc, who: Who
) -> MemberCapOut:
    """Set a member's monthly cap in tokens (`{"tokens": null}` removes it): admins of the
    team only; the token's `sub` is recorded as the actor."""
    auth.authorize(who, team, (auth.ADMIN,))
    change = await svc.ledger.set_member_cap(
        team, member, body.tokens, actor=who.sub, role=who.role, at=svc.clock()
    )
    return MemberCapOut.model_validate(shapes.member_cap_change_dict(change))
