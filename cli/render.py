"""Printing for people (rich tables, progress) and JSON to stdout. The shapes themselves
are ledger/shapes.py's, which the API answers with too."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from ledger.results import BillingSection, ChargeRow
from ledger.shapes import forecast_dict, iso

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

# rich is imported only to print for people: a --json command is a whole
# process, and importing rich would slow its start-up for nothing.


@cache
def console() -> Console:
    from rich.console import Console

    return Console()


def _table(**kwargs: Any) -> Table:
    from rich.table import Table

    return Table(**kwargs)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def print_json(data: Any) -> None:
    print(json.dumps(data, default=_default, indent=2))


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
