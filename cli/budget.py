"""`tokens quote` and `tokens team member-cap`: budget control (README "Budget control")."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli import render
from cli.common import AtOpt, JsonOpt, clock_at, run, settings_for
from cli.jobs import _json_payload
from ledger import shapes, validate
from ledger.errors import BadInput
from wiring.pools import open_ledger

MemberOpt = Annotated[
    str | None, typer.Option("--member", help="Who would launch it (their monthly cap applies)")
]


def quote(
    team: str,
    action: str,
    quantity: Annotated[
        str | None, typer.Option("--quantity", help="Generations (AI actions only)")
    ] = None,
    payload: Annotated[
        str | None, typer.Option("--payload", help="Job payload, JSON (as for enqueue)")
    ] = None,
    member: MemberOpt = None,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """What a job would cost now and how many of its leads fit; nothing is held or queued."""
    settings = settings_for()
    qty = validate.parse_whole(quantity, "--quantity") if quantity is not None else None
    data = _json_payload(payload)
    if member is not None:
        validate.member(member)
    now = clock_at(at)

    async def go() -> dict[str, Any]:
        from worker.budget import quote_jobs

        async with open_ledger(settings) as ledger:
            found = await quote_jobs(
                ledger, team, action, quantity=qty, payload=data, member=member, at=now
            )
        return shapes.quote_dict(found, member)

    out = run(go())
    if json_out:
        render.print_json(out)
        return
    what = f"{out['leads']} lead(s)" if out["leads"] is not None else f"x{qty or 1}"
    print(
        f"{out['action']} {what} for team {out['team']}: {out['tokens']} tokens "
        f"({out['free_tokens']} free + {out['additional_tokens']} additional, "
        f"{out['cost']} {out['currency'].upper()})"
    )
    if out["fits"]:
        print("fits now: nothing would be refused")
    elif out["leads"] is not None:
        print(f"does not fit now: {out['leads_that_fit']} of {out['leads']} leads would be held")
    else:
        print("does not fit now: it would be refused")


def member_cap(
    team: str,
    member: str,
    actor: Annotated[str, typer.Option("--actor", help="Who makes the change")],
    role: Annotated[str, typer.Option("--role", help="admin or member")],
    tokens: Annotated[
        str | None, typer.Argument(help="Monthly cap in tokens (omit with --none)")
    ] = None,
    none: Annotated[bool, typer.Option("--none", help="Remove the member's cap")] = False,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Set (or with --none remove) a member's monthly cap in tokens (admins only; recorded)."""
    settings = settings_for()
    if none and tokens is not None:
        raise BadInput("give a cap in tokens or --none, not both")
    if not none and tokens is None:
        raise BadInput("give the cap in tokens, or --none to remove the member's cap")
    cap = None if tokens is None else validate.cap(validate.parse_whole(tokens, "cap"))
    validate.role(role)
    validate.member(member)
    now = clock_at(at)

    async def go() -> dict[str, Any]:
        async with open_ledger(settings) as ledger:
            change = await ledger.set_member_cap(team, member, cap, actor=actor, role=role, at=now)
        return shapes.member_cap_change_dict(change)

    out = run(go())
    if json_out:
        render.print_json(out)
        return
    old = "none" if out["old_cap"] is None else out["old_cap"]
    new = "none" if out["new_cap"] is None else out["new_cap"]
    print(
        f"team {out['team']}: monthly cap of {out['member']} {old} -> {new} tokens "
        f"by {out['actor']}"
    )
