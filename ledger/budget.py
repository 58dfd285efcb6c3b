"""Budget control: a quote before a job, a forecast of the month (README "Budget control").

Both read the same running totals the holds use (holds included) and apply
the same rule as tokens_apply (free first, then additional up to the limit,
a lead refused whole when it does not fit), so a quote never promises what a
hold would refuse at that moment. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from ledger.results import BillingSection

# Stripe's zero-decimal currencies (docs.stripe.com/currencies#zero-decimal), as
# ledger/sql/periods.sql tokens_minor_units counts them.
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
    | {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
# Less of the month than this gone, and a pace says nothing yet.
MIN_HISTORY = timedelta(days=1)


def money(tokens: int, unit_price: Decimal, currency: str) -> str:
    """The cost of `tokens` in the currency's own decimals, rounded half-up."""
    step = Decimal(1) if currency.lower() in ZERO_DECIMAL else Decimal("0.01")
    return str((Decimal(tokens) * unit_price).quantize(step, rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class Quote:
    team: str
    action: str
    tokens: int  # the whole request
    free_tokens: int
    additional_tokens: int
    cost: str  # of the additional tokens
    currency: str
    fits: bool
    leads: int | None  # for a lead list: how many, and how many fit now
    leads_that_fit: int | None
    period_start: datetime
    period_end: datetime


def quote(
    section: BillingSection,
    *,
    action: str,
    tokens_each: int,
    count: int,
    is_lead_list: bool,
    member_left: int | None,
) -> Quote:
    """What `count` charges of `tokens_each` would cost now, and how many would fit.

    Each charge (a lead, or the one generation) is held whole or refused: the
    first n fit while n x tokens_each is within the month's free and additional
    room and within the member's cap (`member_left`, None: no cap).
    """
    tokens = tokens_each * count
    free = min(tokens, section.free_available)
    additional = tokens - free
    room = section.free_available + section.additional_available
    fitting = min(count, room // tokens_each)
    if member_left is not None:
        fitting = min(fitting, member_left // tokens_each)
    return Quote(
        team=section.team,
        action=action,
        tokens=tokens,
        free_tokens=free,
        additional_tokens=additional,
        cost=money(additional, section.unit_price, section.currency),
        currency=section.currency,
        fits=fitting == count,
        leads=count if is_lead_list else None,
        leads_that_fit=fitting if is_lead_list else None,
        period_start=section.period_start,
        period_end=section.period_end,
    )


@dataclass(frozen=True)
class Forecast:
    free_runs_out: date | None
    additional_runs_out: date | None
    projected_additional_cost: str


def forecast(section: BillingSection, at: datetime) -> Forecast | None:
    """The month at its pace so far: a straight line from the month's start
    through the tokens used by `at` (held and spent, free and additional).

    - `free_runs_out`: the day that line reaches the free grant, if it does
      before the month ends (the day already passed: the line's day, which is
      no later than `at`).
    - `additional_runs_out`: the day it reaches the grant plus the additional
      limit, likewise; None without a limit.
    - `projected_additional_cost`: the additional tokens the line reaches by
      the month's end, within the limit and never below what is used already.
    None when less than MIN_HISTORY of the month has gone.
    """
    elapsed = at - section.period_start
    if elapsed < MIN_HISTORY:
        return None
    length = section.period_end - section.period_start
    # Whole seconds and integer arithmetic keep the line exact: the pace (used /
    # elapsed) is never rounded, so a total reached exactly at `at` is dated `at`.
    elapsed_s = int(elapsed.total_seconds())
    length_s = int(length.total_seconds())
    used = (
        section.free_spent + section.free_held + section.additional_spent + section.additional_held
    )

    def reaches(total: int) -> date | None:
        if total <= 0 or used == 0:
            return None
        seconds = total * elapsed_s // used
        if seconds >= length_s:
            return None
        return (section.period_start + timedelta(seconds=seconds)).date()

    additional_used = section.additional_spent + section.additional_held
    projected_total = (2 * used * length_s + elapsed_s) // (2 * elapsed_s)  # rounded half up
    projected_additional = max(projected_total - section.free_granted, 0)
    projected_additional = max(min(projected_additional, section.additional_limit), additional_used)
    return Forecast(
        free_runs_out=reaches(section.free_granted),
        additional_runs_out=(
            reaches(section.free_granted + section.additional_limit)
            if section.additional_limit > 0
            else None
        ),
        projected_additional_cost=money(projected_additional, section.unit_price, section.currency),
    )
