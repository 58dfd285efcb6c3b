"""`tokens bills`, `tokens bill show`, `tokens bill reissue` (SPEC 7).

Registered by cli/main.py. Only Postgres: nothing here imports stripe.
"""

from __future__ import annotations

import csv
import io
import sys
from typing import Annotated, Any

import typer

from cli import render

bill_app = typer.Typer(help="Explain and reissue bills.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
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
    from cli.main import _run, _settings
    from runtime.app import open_ledger

    settings = _settings()
    check_status(status)

    async def go() -> list[dict[str, Any]]:
        async with open_ledger(settings) as ledger:
            return await list_bills(ledger.pool, team=team, status=status)

    out = _run(go())
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
    from cli.main import _run, _settings
    from runtime.app import open_ledger

    settings = _settings()
    bill_id = parse_bill_id(bill)

    async def go() -> Any:
        async with open_ledger(settings) as ledger:
            return await explain_bill(ledger.pool, bill_id)

    explained = _run(go())
    out = explained.as_dict()
    if csv_out:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for c in explained.charges:
            row = {**c, "bill_id": bill_id, "time": render.iso(c["time"])}
            writer.writerow([row[k] if row[k] is not None else "" for k in CSV_COLUMNS])
        sys.stdout.write(buf.getvalue())
    elif json_out:
        render.print_json(out)
    else:
        print(
            f"bill {out['bill_id']} ({out['team']}, {out['reason']}): {out['tokens']} tokens, "
            f"{out['amount_cents']} {out['currency']} minor units, {out['status']}"
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
    """Bill the same tokens again on a new invoice (a void bill, or one failed for good)."""
    from billing.bills import parse_bill_id, reissue_bill
    from cli.main import _now, _run, _settings
    from runtime.app import open_ledger

    settings = _settings()
    bill_id = parse_bill_id(bill)
    now = _now(at)

    async def go() -> dict[str, Any]:
        async with open_ledger(settings) as ledger:
            return await reissue_bill(ledger.pool, bill_id, at=now)

    out = _run(go())
    if json_out:
        render.print_json(out)
    else:
        print(
            f"bill {bill_id} reissued as bill {out['bill_id']} ({out['tokens']} tokens); "
            "`tokens reconcile` sends it to the team's current Stripe customer"
        )
