"""`tokens alerts TEAM [--json]`: a team's usage alerts, newest first (README "Usage alerts").

Registered by cli/main.py.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer


def alerts(
    team: str,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Only billing months started by then (ISO 8601, UTC)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Usage alerts of the team (80 % / 100 % of the free grant and of the limit), newest first."""
    from cli import render
    from cli.common import run, settings_for
    from ledger import validate
    from wiring.pools import open_ledger

    settings = settings_for()
    until = validate.parse_moment(at, "--at") if at is not None else None

    async def go() -> list[dict[str, Any]]:
        async with open_ledger(settings) as ledger:
            found = await ledger.alerts(team)
        return [a.as_dict() for a in found if until is None or a.period_start <= until]

    out = run(go())
    if json_out:
        render.print_json(out)
        return
    if not out:
        print(f"team {team}: no usage alerts")
    for a in out:
        of = "free tokens" if a["kind"] == "free" else "additional-token limit"
        delivery = f"delivered {a['delivered_at']}" if a["delivered_at"] else "not delivered"
        print(
            f"{a['created_at']}  {a['level']} % of the {of}: {a['spent']} of "
            f"{a['granted_or_limit']} tokens (billing month from {a['period_start']}; "
            f"{delivery})  {a['alert_id']}"
        )
