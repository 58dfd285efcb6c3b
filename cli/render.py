"""Turning results into JSON, CSV or rich tables. Money as strings, time as UTC ISO 8601."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from ledger.budget import Quote, forecast
from ledger.results import (
    BillingSection,
    ChargeRow,
    HoldResult,
    LimitChangeRow,
    MemberCapChangeRow,
    Settlement,
    TeamRow,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

# rich is imported only to print for people: a --json command is a whole
# process, and rich costs it about 40 ms of start-up.

_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


@cache
def console() -> Console:
    from rich.console import Console

    return Console()


def _table(**kwargs: Any) -> Table:
    from rich.table import Table

    return Table(**kwargs)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def print_json(data: Any) -> None:
    print(json.dumps(data, default=_default, indent=2))


def charge_dict(c: ChargeRow) -> dict[str, Any]:
    return {
        "charge_id": c.id,
        "time": iso(c.held_at),
        "action": c.action,
        "quantity": c.quantity,
        "tokens": c.tokens,
        "free_tokens": c.free_tokens,
        "additional_tokens": c.additional_tokens,
        "state": c.state,
        "job_id": c.job_id,
        "lead_id": c.lead_id,
        "key": c.idempotency_key,
        "period_start": iso(c.period_start),
        "settled_at": iso(c.settled_at),
    }


HISTORY_COLUMNS = [
    "charge_id",
    "time",
    "action",
    "quantity",
    "tokens",
    "free_tokens",
    "additional_tokens",
    "state",
    "job_id",
    "lead_id",
    "key",
    "period_start",
    "settled_at",
]


def hold_dict(held: HoldResult, settlement: Settlement | None) -> dict[str, Any]:
    state = settlement.charge.state if settlement else held.state
    return {
        "charge_id": held.charge_id,
        "team": held.team,
        "action": held.action,
        "quantity": held.quantity,
        "key": held.key,
        "tokens": held.tokens,
        "free_tokens": held.free_tokens,
        "additional_tokens": held.additional_tokens,
        "state": state,
        "replayed": held.replayed,
        "period_start": iso(held.period_start),
        "period_end": iso(held.period_end),
    }


def team_set_dict(team: TeamRow, created: bool, now: BillingSection) -> dict[str, Any]:
    """A team as `tokens team set` and `PUT /v1/teams/{team}` answer: with this month."""
    return {
        "team": team.id,
        "created": created,
        "plan": team.plan,
        "seats": team.seats,
        "interval": team.billing_interval,
        "anchor": iso(team.anchor),
        "stripe_customer": team.stripe_customer,
        "additional_limit": team.additional_limit,
        "period_start": iso(now.period_start),
        "period_end": iso(now.period_end),
        "free_granted": now.free_granted,
    }


def team_list_dict(team: TeamRow, period_start: datetime, period_end: datetime) -> dict[str, Any]:
    """A team as `tokens teams` and `GET /v1/teams` list it: with its current month."""
    return {
        "team": team.id,
        "plan": team.plan,
        "seats": team.seats,
        "interval": team.billing_interval,
        "anchor": iso(team.anchor),
        "stripe_customer": team.stripe_customer,
        "additional_limit": team.additional_limit,
        "period_start": iso(period_start),
        "period_end": iso(period_end),
    }


def print_teams(teams: list[dict[str, Any]]) -> None:
    """Plain aligned columns: a team id is copied from here, so it is never cut or wrapped."""
    if not teams:
        print("no teams yet: create one with `tokens team set TEAM --plan ...`")
        return
    rows = [("team", "plan", "seats", "interval", "billing month (UTC)")]
    for t in teams:
        month = f"{_day_or_minute(t['period_start'])} -> {_day_or_minute(t['period_end'])}"
        rows.append((t["team"], t["plan"], str(t["seats"]), t["interval"], month))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _day_or_minute(iso_time: str) -> str:
    """2026-12-01T00:00:00Z -> 2026-12-01; another time of day keeps its minute."""
    day, _, time = iso_time.partition("T")
    return day if time.startswith("00:00:00") else f"{day} {time[:5]}"


def limit_change_dict(change: LimitChangeRow, after: BillingSection) -> dict[str, Any]:
    """A limit change and what it leaves this month (command line and API alike)."""
    return {
        "team": change.team_id,
        "actor": change.actor,
        "role": change.role,
        "old_limit": change.old_limit,
        "new_limit": change.new_limit,
        "changed_at": iso(change.changed_at),
        "additional_limit_usd": str(after.additional_limit_usd),
        "additional_available": after.additional_available,
    }


def billing_dict(s: BillingSection, *, at: datetime) -> dict[str, Any]:
    """The billing section as `tokens billing --json` and the API give it; `at`: the
    moment it was read (the forecast's pace runs up to it)."""
    return {
        "team": s.team,
        "plan": s.plan,
        "seats": s.seats,
        "interval": s.interval,
        "period_start": iso(s.period_start),
        "period_end": iso(s.period_end),
        "free_granted": s.free_granted,
        "free_spent": s.free_spent,
        "free_held": s.free_held,
        "free_available": s.free_available,
        "additional_limit": s.additional_limit,
        "additional_limit_usd": str(s.additional_limit_usd),
        "additional_spent": s.additional_spent,
        "additional_held": s.additional_held,
        "additional_available": s.additional_available,
        "additional_spent_usd": str(s.additional_spent_usd),
        "additional_billed": s.additional_billed,
        "held": s.held,
        "unit_price_usd": str(s.unit_price),
        "currency": s.currency,
        "history": [charge_dict(c) for c in s.recent_charges],
        "members": members_list(s),
        "forecast": forecast_dict(s, at),
    }


def members_list(s: BillingSection) -> list[dict[str, Any]]:
    """The members with a cap: this month's spend (captured), holds, cap and what is left."""
    return [
        {"member": m.member, "spent": m.spent, "cap": m.cap, "held": m.held, "left": m.left}
        for m in s.members
    ]


def forecast_dict(s: BillingSection, at: datetime) -> dict[str, Any] | None:
    found = forecast(s, at)
    if found is None:
        return None
    return {
        "free_runs_out": _day(found.free_runs_out),
        "additional_runs_out": _day(found.additional_runs_out),
        "projected_additional_cost": found.projected_additional_cost,
    }


def _day(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def quote_dict(q: Quote, member: str | None) -> dict[str, Any]:
    return {
        "team": q.team,
        "action": q.action,
        "member": member,
        "tokens": q.tokens,
        "free_tokens": q.free_tokens,
        "additional_tokens": q.additional_tokens,
        "cost": q.cost,
        "currency": q.currency,
        "leads": q.leads,
        "leads_that_fit": q.leads_that_fit,
        "fits": q.fits,
        "period_start": iso(q.period_start),
        "period_end": iso(q.period_end),
    }


def member_cap_change_dict(change: MemberCapChangeRow) -> dict[str, Any]:
    """A member cap change (command line and API alike); a cap of None: no cap."""
    return {
        "team": change.team_id,
        "member": change.member,
        "actor": change.actor,
        "role": change.role,
        "old_cap": change.old_cap,
        "new_cap": change.new_cap,
        "changed_at": iso(change.changed_at),
    }


def print_billing(s: BillingSection, *, at: datetime) -> None:
    console().print(
        f"[bold]{s.team}[/bold]  plan {s.plan} x{s.seats} seats ({s.interval}ly)  "
        f"billing month {iso(s.period_start)} -> {iso(s.period_end)}"
    )
    table = _table(show_header=True, header_style="bold")
    for col in ("", "available", "spent", "held", "limit / granted"):
        table.add_column(col, justify="right")
    table.add_row(
        "Free tokens",
        str(s.free_available),
        str(s.free_spent),
        str(s.free_held),
        str(s.free_granted),
    )
    table.add_row(
        "Additional tokens",
        str(s.additional_available),
        f"{s.additional_spent} (${s.additional_spent_usd})",
        str(s.additional_held),
        f"{s.additional_limit} (max ${s.additional_limit_usd})",
    )
    console().print(table)
    console().print(f"Additional tokens billed this month: {s.additional_billed}")
    if s.members:
        from rich.markup import escape

        caps = _table(title="Members with a monthly cap", show_header=True, header_style="bold")
        for col in ("member", "spent", "held", "cap", "left"):
            caps.add_column(col, justify="left" if col == "member" else "right")
        for m in s.members:
            caps.add_row(escape(m.member), str(m.spent), str(m.held), str(m.cap), str(m.left))
        console().print(caps)
    console().print(forecast_line(s, at), highlight=False)
    if s.recent_charges:
        print_history(s.recent_charges, title="Latest charges this month")


def forecast_line(s: BillingSection, at: datetime) -> str:
    found = forecast_dict(s, at)
    if found is None:
        return "Forecast: not enough history yet (less than a day of this billing month)."
    free = found["free_runs_out"]
    reached = found["additional_runs_out"]
    if not s.additional_limit:
        limit = "there is no additional-token limit"
    else:
        limit = f"the limit is reached on {reached}" if reached else "the limit lasts the month"
    return (
        "Forecast at this month's pace: "
        + (f"free tokens run out on {free}" if free else "free tokens last the month")
        + f"; {limit}; projected additional cost {found['projected_additional_cost']} "
        + f"{s.currency.upper()}."
    )


def print_history(charges: list[ChargeRow], title: str = "History") -> None:
    table = _table(title=title, show_header=True, header_style="bold")
    for col in ("time", "action", "qty", "tokens", "free", "additional", "state", "job", "lead"):
        table.add_column(col)
    for c in charges:
        table.add_row(
            iso(c.held_at),
            c.action,
            str(c.quantity),
            str(c.tokens),
            str(c.free_tokens),
            str(c.additional_tokens),
            c.state,
            c.job_id or "",
            c.lead_id or "",
        )
    console().print(table)


@contextmanager
def progress_bar(label: str, *, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on a terminal; a no-op elsewhere (cron, pipes, --json)."""
    if not enabled or not console().is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import Progress

    with Progress(console=console(), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def print_reconcile(out: dict[str, Any]) -> None:
    console().print(
        f"bills created {out['bills_created']}, sent {out['bills_sent']}, "
        f"failed {out['bills_failed']}, unsent {out['bills_unsent']} ({out['seconds']} s)"
    )
    if not out["bills"]:
        return
    table = _table(show_header=True, header_style="bold")
    for col in ("bill", "team", "reason", "tokens", "amount", "status", "invoice", "error"):
        table.add_column(col)
    for b in out["bills"]:
        table.add_row(
            str(b["bill_id"]),
            b["team"],
            b["reason"],
            str(b["tokens"]),
            f"${Decimal(b['amount_cents']) / 100:.2f}",
            b["status"],
            b["stripe_invoice_id"] or "",
            b["error"] or "",
        )
    console().print(table)


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: None empty, and text that a spreadsheet would run as a
    formula (=, +, @, a tab or CR first, or - before anything but a number) behind a
    quote. Keys and lead ids come from the application's users."""
    if value is None:
        return ""
    if (
        isinstance(value, str)
        and value
        and (value[0] in "=+@\t\r" or (value[0] == "-" and not _NUMBER.fullmatch(value)))
    ):
        return "'" + value
    return value


def history_csv(charges: list[ChargeRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in charges:
        writer.writerow({k: csv_cell(v) for k, v in charge_dict(c).items()})
    return out.getvalue()
