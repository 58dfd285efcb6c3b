"""A team's billing section, history, limit and settings. Routes: authorize, validate, call."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from api import auth
from api.deps import AUTHED, WITH_BODY, Svc, Who, documented
from api.errors import ApiError
from api.schemas import (
    AlertsOut,
    BillingOut,
    HistoryPage,
    LimitIn,
    LimitOut,
    TeamIn,
    TeamOut,
    TeamsOut,
)
from ledger import shapes, validate

router = APIRouter(prefix="/v1/teams", tags=["teams"])

# `{team:path}` in every route: a team id may hold a "/" (ledger/validate.py), sent
# raw or as %2F (servers decode it before routing). Each route ends in its own
# fixed suffix, so the id is whatever comes before it: /v1/teams/org/7/billing is
# the billing of "org/7". The one ambiguity: PUT /v1/teams/x/limit is the limit
# of "x", so a team whose id ends in "/limit" is set up by the CLI, not by PUT.
TeamPath = Annotated[str, Path(min_length=1, max_length=200, description="team id")]
READERS = (auth.MEMBER, auth.ADMIN, auth.SERVICE)
MAX_PAGE = 500


@router.get("", responses=documented(401, 403, 503))
async def list_teams(svc: Svc, who: Who) -> TeamsOut:
    """Every team with its current billing month, by id (as `tokens teams --json`): the
    `service` role only."""
    if who.role != auth.SERVICE:
        raise ApiError(403, "forbidden_role", f"role {who.role!r} may not list teams")
    found = await svc.ledger.teams(at=svc.clock())
    return TeamsOut.model_validate({"teams": [shapes.team_list_dict(*row) for row in found]})


@router.get("/{team:path}/billing", responses=documented(*AUTHED))
async def billing(team: TeamPath, svc: Svc, who: Who) -> BillingOut:
    """The billing section of the team's current billing month (as `tokens billing --json`)."""
    auth.authorize(who, team, READERS)
    now = svc.clock()
    section = await svc.ledger.billing(team, at=now)
    return BillingOut.model_validate(shapes.billing_dict(section, at=now))


def parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or int(cursor) < 1 or len(cursor) > 18:
        raise ApiError(422, "invalid_cursor", f"cursor {cursor!r} is not one this API gave")
    return int(cursor)


async def history_page(
    svc: Svc, team: str, *, cursor: str | None, limit: int, month: datetime | None = None
) -> tuple[list[Any], str | None]:
    """One page of charges, newest first, and the cursor of the next (older) page; only the
    billing month starting at `month` when it is given."""
    rows = await svc.ledger.history_page(
        team, before=parse_cursor(cursor), limit=limit + 1, month=month
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (str(rows[-1].id) if more and rows else None)


@router.get("/{team:path}/history", responses=documented(*AUTHED))
async def history(
    team: TeamPath,
    svc: Svc,
    who: Who,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=32, description="next_cursor")] = None,
) -> HistoryPage:
    """The team's charges, newest first, `limit` at a time."""
    auth.authorize(who, team, READERS)
    rows, next_cursor = await history_page(svc, team, cursor=cursor, limit=limit)
    return HistoryPage.model_validate(
        {"charges": [shapes.charge_dict(c) for c in rows], "next_cursor": next_cursor}
    )


@router.get(
    "/{team:path}/history.csv",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **documented(*AUTHED),
    },
)
async def history_csv(team: TeamPath, svc: Svc, who: Who) -> Response:
    """Every charge of the team, oldest first, as CSV with a header row (as `tokens history
    --csv`)."""
    auth.authorize(who, team, READERS)
    charges = await svc.ledger.history(team)
    return Response(
        shapes.history_csv(charges),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": (f'attachment; filename="{team.replace("/", "_")}-history.csv"')
        },
    )


@router.get("/{team:path}/alerts", responses=documented(*AUTHED))
async def alerts(team: TeamPath, svc: Svc, who: Who) -> AlertsOut:
    """The team's usage alerts (80 % and 100 % of the free grant and of the limit), newest
    first (as `tokens alerts TEAM --json`)."""
    auth.authorize(who, team, READERS)
    found = await svc.ledger.alerts(team)
    return AlertsOut.model_validate({"team": team, "alerts": [a.as_dict() for a in found]})


@router.put("/{team:path}/limit", responses=documented(*WITH_BODY))
async def set_limit(team: TeamPath, body: LimitIn, svc: Svc, who: Who) -> LimitOut:
    """Change the monthly additional-token limit: admins of the team only; the token's `sub`
    is recorded as the actor."""
    auth.authorize(who, team, (auth.ADMIN,))
    return await change_limit(svc, team, body.tokens, who)


async def change_limit(svc: Svc, team: str, tokens: int, who: auth.Caller) -> LimitOut:
    """The ledger's limit change by this caller (shared with the billing page's form)."""
    now = svc.clock()
    change = await svc.ledger.set_limit(team, tokens, actor=who.sub, role=who.role, at=now)
    section = await svc.ledger.billing(team, at=now)
    return LimitOut.model_validate(shapes.limit_change_dict(change, section))


@router.put(
    "/{team:path}",
    responses={
        200: {"description": "updated"},
        201: {"model": TeamOut, "description": "created"},
        **documented(400, 401, 403, 409, 413, 422, 503),
    },
)
async def set_team(team: TeamPath, body: TeamIn, svc: Svc, who: Who, response: Response) -> TeamOut:
    """Create or update a team (the fields of `tokens team set`): the `service` role only."""
    auth.authorize(who, team, (auth.SERVICE,))
    now = svc.clock()
    # As on the command line: an anchor without an offset is UTC.
    anchor = validate.moment(body.anchor if body.anchor.tzinfo else body.anchor.replace(tzinfo=UTC))
    row, created = await svc.ledger.set_team(
        team,
        plan=body.plan,
        seats=body.seats,
        interval=body.interval,
        anchor=anchor,
        at=now,
        stripe_customer=body.stripe_customer,
    )
    section = await svc.ledger.billing(team, at=now)
    response.status_code = 201 if created else 200
    return TeamOut.model_validate(shapes.team_set_dict(row, created, section))
