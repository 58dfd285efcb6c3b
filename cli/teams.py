"""`tokens team set`, `tokens team limit` and `tokens teams`: a team's plan, seats, anchor
and limit, and the list of every team."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli import render
from cli.common import AtOpt, JsonOpt, clock_at, run, settings_for
from ledger import shapes, validate
from wiring.pools import open_ledger

team_app = typer.Typer(help="Create and change teams.", no_args_is_help=True)


@team_app.command("set")
def team_set(
    team: str,
    plan: Annotated[str, typer.Option("--plan")],
    seats: Annotated[str, typer.Option("--seats")],
    interval: Annotated[str, typer.Option("--interval", help="month or year")],
    anchor: Annotated[str, typer.Option("--anchor", help="Billing anchor, ISO 8601")],
    stripe_customer: Annotated[str | None, typer.Option("--stripe-customer")] = None,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create or update a team: plan, seats, billing interval and anchor."""
    settings = settings_for()
    n_seats = validate.parse_whole(seats, "--seats")
    anchor_at = validate.parse_moment(anchor, "--anchor")
    now = clock_at(at)

    async def go() -> dict[str, Any]:
        async with open_ledger(settings) as ledger:
            team_row, created = await ledger.set_team(
                team,
                plan=plan,
                seats=n_seats,
                interval=interval,
                anchor=anchor_at,
                at=now,
                stripe_customer=stripe_customer,
            )
            section = await ledger.billing(team, at=now)
        return shapes.team_set_dict(team_row, created, section)

    out = run(go())
    if json_out:
        render.print_json(out)
    else:
        verb = "created" if out["created"] else "updated"
        print(
            f"team {out['team']} {verb}: {out['plan']} x{out['seats']} seats, "
            f"{out['interval']}ly from {out['anchor']}; this month "
            f"{out['period_start']} -> {out['period_end']} grants {out['free_granted']} free tokens"
        )


@team_app.command("limit", context_settings={"ignore_unknown_options": True})
def team_limit(
    team: str,
    tokens: Annotated[str, typer.Argument(help="Monthly additional-token limit")],
    actor: Annotated[str, typer.Option("--actor", help="Who makes the change")],
    role: Annotated[str, typer.Option("--role", help="admin or member")],
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Set a team's monthly additional-token limit (admins only; recorded)."""
    settings = settings_for()
    limit = validate.parse_whole(tokens, "limit")
    validate.limit(limit)
    validate.role(role)
    now = clock_at(at)

    async def go() -> dict[str, Any]:
        async with open_ledger(settings) as ledger:
            change = await ledger.set_limit(team, limit, actor=actor, role=role, at=now)
            section = await ledger.billing(team, at=now)
        return shapes.limit_change_dict(change, section)

    out = run(go())
    if json_out:
        render.print_json(out)
    else:
        print(
            f"team {out['team']}: additional-token limit {out['old_limit']} -> "
            f"{out['new_limit']} (max ${out['additional_limit_usd']} a month) by {out['actor']}"
        )


def teams(at: AtOpt = None, json_out: JsonOpt = False) -> None:
    """List every team: plan, seats, interval and its current billing month."""
    settings = settings_for()
    now = clock_at(at)

    async def go() -> list[dict[str, Any]]:
        async with open_ledger(settings) as ledger:
            found = await ledger.teams(at=now)
        return [shapes.team_list_dict(*row) for row in found]

    out = run(go())
    if json_out:
        render.print_json(out)
    else:
        render.print_teams(out)
