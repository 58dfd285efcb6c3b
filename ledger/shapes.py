"""The JSON shapes of ledger results, as both the CLI (`--json`, `--csv`) and the API answer
them: one builder per shape, so the two can never drift apart (README, "Command line"
and "HTTP API"). Money as integers or decimal strings, time as UTC ISO 8601."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime
from typing import Any

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

_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


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
