"""`tokens charge`, `tokens billing`, `tokens history`: spending and reading the ledger."""

from __future__ import annotations

import sys
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import structlog
import typer

from cli import render
from cli.common import AtOpt, JsonOpt, clock_at, refuse_both, run, settings_for
from ledger import shapes, validate
from ledger.errors import refusal_error
from wiring.pools import open_ledger

if TYPE_CHECKING:
    from ledger.service import Ledger

log = structlog.get_logger("tokens.cli")


def charge(
    team: str,
    action: str,
    quantity: Annotated[str, typer.Option("--quantity")] = "1",
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key")] = None,
    member: Annotated[
        str | None, typer.Option("--member", help="Who spends (their monthly cap applies)")
    ] = None,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Hold and capture tokens at once, for a search that happened."""
    settings = settings_for()
    if member is not None:
        validate.member(member)
    qty = validate.parse_whole(quantity, "--quantity")
    validate.quantity(qty)
    now = clock_at(at)
    idem = key if key is not None else f"cli:{uuid.uuid4()}"

    async def go() -> dict[str, Any]:
        bills: list[Any] = []
        async with open_ledger(settings) as ledger:
            held, settlement = await ledger.charge(
                team, action, qty, key=idem, at=now, member=member
            )
            if settlement is not None and settlement.threshold_reached:
                bills = await _threshold_bills(ledger, team, now)
        if held.refused:
            raise refusal_error(held)
        made = [
            {
                "bill_id": b.id,
                "reason": b.reason,
                "tokens": b.tokens,
                "amount_cents": b.amount_cents,
            }
            for b in bills
        ]
        return shapes.hold_dict(held, settlement) | {"bills_created": made}

    out = run(go())
    if json_out:
        render.print_json(out)
        return
    again = " (replayed: this key was charged before)" if out["replayed"] else ""
    print(
        f"charge {out['charge_id']}: {out['action']} x{out['quantity']} = {out['tokens']} "
        f"tokens ({out['free_tokens']} free + {out['additional_tokens']} additional), "
        f"{out['state']}{again}"
    )
    for b in out["bills_created"]:
        print(
            f"bill {b['bill_id']} made ({b['reason']}, {b['tokens']} tokens): "
            "`tokens reconcile` or the worker sends it to Stripe"
        )


async def _threshold_bills(ledger: Ledger, team: str, now: datetime) -> list[Any]:
    """The bill is made at once, as the worker's jobs have it made; the next `tokens
    reconcile` (cron) or the worker's periodic run sends it (README "Bills, exactly once").

    The charge is committed by now: whatever goes wrong here must not make the
    command fail, or a person would charge again. The next reconcile makes the
    bill anyway."""
    from billing.reconcile import create_bills

    try:
        return await create_bills(ledger.pool, team=team, at=now)
    except Exception as exc:
        log.warning("threshold_bill_left_to_reconcile", team=team, error=repr(exc)[:200])
        return []


def billing(team: str, at: AtOpt = None, json_out: JsonOpt = False) -> None:
    """The billing section of the team's current billing month."""
    settings = settings_for()
    now = clock_at(at)

    async def go() -> Any:
        async with open_ledger(settings) as ledger:
            return await ledger.billing(team, at=now)

    section = run(go())
    if json_out:
        render.print_json(shapes.billing_dict(section, at=now))
    else:
        render.print_billing(section, at=now)


def history(
    team: str,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV with a header row.")] = False,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Every charge of the team, oldest first (up to --at when given)."""
    refuse_both(csv_out, json_out)
    settings = settings_for()
    until = validate.parse_moment(at, "--at") if at is not None else None

    async def go() -> Any:
        async with open_ledger(settings) as ledger:
            charges = await ledger.history(team)
        return [c for c in charges if until is None or c.held_at <= until]

    charges = run(go())
    if csv_out:
        sys.stdout.write(shapes.history_csv(charges))
    elif json_out:
        render.print_json([shapes.charge_dict(c) for c in charges])
    else:
        render.print_history(charges)
