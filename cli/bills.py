"""`tokens reconcile`, `tokens bills`, `tokens bill show`, `tokens bill reissue` (README
"Billing with Stripe").

Registered by cli/main.py. Only `reconcile` imports stripe, when it runs.
"""

from __future__ import annotations

import csv
import io
import sys
from decimal import Decimal
from typing import Annotated, Any

import typer

from cli import render
from cli.common import AtOpt, JsonOpt, clock_at, refuse_both, run, settings_for
from ledger import shapes
from ledger.errors import TokensError
from wiring.pools import open_ledger

bill_app = typer.Typer(help="Explain and reissue bills.", no_args_is_help=True)

CSV_COLUMNS = (
    "bill_id",
    "charge_id",
    "action",
    "quantity",
    "additional_tokens",
    "job_id",
    "lead_id",
    "time",
)


def bills(
    team: Annotated[str | None, typer.Option("--team", help="Only this team")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only this status")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Finance's list of bills, oldest first."""
    from billing.bills import check_status, list_bills
    from cli.common import run, settings_for
    from wiring.pools import open_ledger

    settings = settings_for()
    check_status(status)

    async def go() -> list[dict[str, Any]]:
        async with open_ledger(settings) as ledger:
            if team is not None:
                await ledger.get_team(team)  # a typo is "unknown team", not an empty list
            return await list_bills(ledger.pool, team=team, status=status)

    out = run(go())
    if json_out:
        render.print_json(out)
        return
    render.print_reconcile(
        {
            "bills_created": 0,
            "bills_sent": sum(b["status"] in ("open", "paid") for b in out),
            "bills_failed": sum(b["status"] == "failed" for b in out),
            "bills_unsent": sum(b["status"] == "unsent" for b in out),
            "seconds": 0,
            "bills": out,
        }
    )


@bill_app.command("show")
def show(
    bill: str,
    csv_out: Annotated[bool, typer.Option("--csv", help="One CSV row per charge.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Explain a bill: the exact charges whose additional tokens it billed."""
    from billing.bills import explain_bill, parse_bill_id
    from cli.common import run, settings_for
    from wiring.pools import open_ledger

    refuse_both(csv_out, json_out)
    settings = settings_for()
    bill_id = parse_bill_id(bill)

    async def go() -> Any:
        async with open_ledger(settings) as ledger:
            return await explain_bill(ledger.pool, bill_id)

    explained = run(go())
    out = explained.as_dict()
    if csv_out:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for c in explained.charges:
            row = {**c, "bill_id": bill_id, "time": shapes.iso(c["time"])}
            writer.writerow([shapes.csv_cell(row[k]) for k in CSV_COLUMNS])
        sys.stdout.write(buf.getvalue())
    elif json_out:
        render.print_json(out)
    else:
        print(
            f"bill {out['bill_id']} ({out['team']}, {out['reason']}): {out['tokens']} tokens, "
            f"{out['currency'].upper()} {Decimal(out['amount_cents']) / 100:.2f}, {out['status']}"
            + (f", invoice {out['stripe_invoice_id']}" if out["stripe_invoice_id"] else "")
            + (f", error {out['error_code']}: {out['error']}" if out["error_code"] else "")
        )
        for action, tokens in out["by_action"].items():
            print(f"  {action}: {tokens} tokens")
        print(f"  {len(out['charges'])} charges, {out['charges_tokens']} tokens")


@bill_app.command("reissue")
def reissue(
    bill: str,
    at: Annotated[
        str | None, typer.Option("--at", help="The clock for this command (ISO 8601, UTC).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Bill the same tokens again on a new invoice (a void or uncollectible bill, or one
    failed for good); the old invoice is first made unable to collect at Stripe."""
    from billing.bills import parse_bill_id, reissue_bill
    from cli.common import clock_at, run, settings_for
    from wiring.pools import open_ledger

    settings = settings_for()
    bill_id = parse_bill_id(bill)
    now = clock_at(at)

    async def go() -> dict[str, Any]:
        from billing.stripe_client import make_stripe_client

        async with open_ledger(settings) as ledger:
            return await reissue_bill(
                ledger.pool, bill_id, at=now, client=make_stripe_client(settings)
            )

    out = run(go())
    if json_out:
        render.print_json(out)
    elif not out["reissued"]:
        print(
            f"bill {bill_id} was not reissued: it follows {out['follows']} "
            f"(now {out['status']}; a fixed draft or open invoice resumes at the next reconcile)"
        )
    else:
        print(
            f"bill {bill_id} reissued as bill {out['bill_id']} ({out['tokens']} tokens); "
            "`tokens reconcile` sends it to the team's current Stripe customer"
        )


def reconcile(
    team: Annotated[str | None, typer.Option("--team", help="Only this team")] = None,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Bill what is due and send unsent bills to Stripe (one run, for cron)."""
    settings = settings_for(service=True)
    now = clock_at(at)

    async def go() -> dict[str, Any]:
        from billing.reconcile import reconcile as run_reconcile
        from billing.sender import sender_from_settings

        async with open_ledger(settings) as ledger:
            sender = sender_from_settings(ledger.pool, settings, lambda: now)
            with render.progress_bar("sending bills", enabled=not json_out) as advance:
                report = await run_reconcile(
                    ledger.pool, sender, team=team, at=now, progress=advance
                )
        return report.as_dict()

    out = run(go())
    if json_out:
        render.print_json(out)
    else:
        render.print_reconcile(out)
    if out["bills_failed"]:
        raise ReconcileFailed(out["bills_failed"])


class ReconcileFailed(TokensError):
    code = "bills_failed"

    def __init__(self, failed: int) -> None:
        super().__init__(f"{failed} bill(s) could not be sent to Stripe; they are kept and retried")
