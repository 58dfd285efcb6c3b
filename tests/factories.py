"""One set-up vocabulary for the tests: a team, made on a Ledger or through the CLI.

    await make_team(ledger, "acme", seats=2, limit=100)   # a Ledger: awaitable
    make_team(cli, "acme", seats=2, limit=100)            # the CLI in-process, or a
                                                          # `Tokens` process: at once

Both make the same team: plan email_outreach, one seat, monthly, anchored (and
set) on 2026-01-01 unless told otherwise; `limit` sets the additional-token
limit as an admin (`actor`). Times are ISO strings (a trailing Z or none: UTC)
or datetimes (see tests/clock.py). The argv builders themselves (`argv`,
`team_set`, `team_limit`) are in tests/process/__init__.py.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Protocol

from ledger.results import TeamRow
from ledger.service import Ledger
from tests import clock
from tests.clock import Moment, iso
from tests.process import TEAM_DEFAULTS, team_limit, team_set


class RunsCommands(Protocol):
    """`tests.cli_helpers.Cli` or `tests.process.Tokens`: `ok(*argv)` runs a command."""

    def ok(self, *args: str) -> Any: ...


def make_team(
    target: Ledger | RunsCommands,
    team: str = "acme",
    *,
    plan: str = "email_outreach",
    seats: int = 1,
    interval: str = TEAM_DEFAULTS["interval"],
    anchor: Moment = TEAM_DEFAULTS["anchor"],
    at: Moment | None = None,
    limit: int = 0,
    actor: str = "ann",
    stripe_customer: str | None = None,
) -> Awaitable[TeamRow] | None:
    """Create a team (and its additional-token limit, when `limit`), set at `at`
    (default: the anchor). On a Ledger: an awaitable of the team; else None."""
    when = anchor if at is None else at
    if isinstance(target, Ledger):
        fields = {
            "plan": plan, "seats": seats, "interval": interval, "stripe_customer": stripe_customer
        }  # fmt: skip
        return _on_ledger(target, team, limit, actor, clock.at(anchor), clock.at(when), fields)
    target.ok(*team_set(team, plan=plan, seats=seats, interval=interval, anchor=iso(anchor),
                        at=iso(when), stripe_customer=stripe_customer))  # fmt: skip
    if limit:
        target.ok(*team_limit(team, limit, actor=actor, at=iso(when)))
    return None


async def _on_ledger(
    ledger: Ledger,
    team: str,
    limit: int,
    actor: str,
    anchor: datetime,
    when: datetime,
    fields: dict[str, Any],
) -> TeamRow:
    row, _ = await ledger.set_team(team, anchor=anchor, at=when, **fields)
    if limit:
        await ledger.set_limit(team, limit, actor=actor, role="admin", at=when)
        row = await ledger.get_team(team)
    return row
