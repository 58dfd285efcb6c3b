"""What the ledger returns: plain, frozen rows built from its own SQL results.

These are dataclasses, not the SQLModel table classes of `ledger/models.py`:
a table class built without SQLAlchemy's mapper configuration crashes on
attribute access in a fresh process (`'NoneType' object has no attribute
'supports_population'`), and importing SQLAlchemy would slow every command's
start. The table classes describe the schema; these carry data.

`from_record` picks its fields by name, so a query may return more columns
than a row keeps (a migration adding a column does not break a read).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, Self


class Record(Protocol):
    """An asyncpg record or a dict: values by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return names


class _Row:
    """`from_record` for a dataclass: its fields, by name, from a record or mapping."""

    __slots__ = ()

    @classmethod
    def from_record(cls, record: Record, **overrides: Any) -> Self:
        values = {n: record[n] for n in _field_names(cls) if n not in overrides}
        return cls(**values, **overrides)


@dataclass(frozen=True, slots=True)
class ChargeRow(_Row):
    """One charge: the tokens of one search, held, then captured, released or expired."""

    id: int
    team_id: str
    period_start: datetime
    idempotency_key: str
    action: str
    quantity: int
    tokens: int
    free_tokens: int
    additional_tokens: int
    state: str
    job_id: str | None
    lead_id: str | None
    held_at: datetime
    settled_at: datetime | None
    member: str | None  # who launched it, when known (the JWT's sub, --member)


@dataclass(frozen=True, slots=True)
class TeamRow(_Row):
    id: str
    plan: str
    seats: int
    billing_interval: str
    anchor: datetime
    stripe_customer: str | None
    additional_limit: int
    trial_granted: bool
    created_at: datetime
    updated_at: datetime
    stripe_subscription: str | None  # as the Stripe webhooks last read it
    subscription_ended_at: datetime | None  # months starting from here grant nothing


@dataclass(frozen=True, slots=True)
class LimitChangeRow(_Row):
    """Who changed a team's additional-token limit, when, from what to what."""

    id: int
    team_id: str
    actor: str
    role: str
    old_limit: int
    new_limit: int
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class MemberCapChangeRow(_Row):
    """Who changed a member's monthly cap, when, from what to what (None: no cap)."""

    id: int
    team_id: str
    member: str
    actor: str
    role: str
    old_cap: int | None
    new_cap: int | None
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class MemberSpend(_Row):
    """A capped member's use of one billing month."""

    member: str
    cap: int
    held: int
    spent: int

    @property
    def left(self) -> int:
        return max(self.cap - self.held - self.spent, 0)


@dataclass(frozen=True, slots=True)
class HoldResult:
    """What a hold (or a replay of its key) returned. `state` is 'refused' when it did not fit."""

    team: str
    key: str
    action: str
    quantity: int
    charge_id: int | None
    state: str
    replayed: bool
    tokens: int
    free_tokens: int
    additional_tokens: int
    period_start: datetime
    period_end: datetime
    held_at: datetime | None
    free_available: int | None
    additional_available: int | None
    member: str | None = None
    # Why a refused hold did not fit: 'not_enough_tokens' or 'member_cap'.
    refusal: str | None = None

    @property
    def refused(self) -> bool:
        return self.state == "refused"


@dataclass(frozen=True, slots=True)
class StaleHold:
    """A job's hold older than the hold TTL: the sweep's to settle, unless its job
    still runs or waits."""

    charge_id: int
    team: str
    key: str
    job_id: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """A capture or release: the charge as it is now, and whether this call changed it."""

    charge: ChargeRow
    changed: bool
    unbilled_additional: int
    threshold_reached: bool


@dataclass(frozen=True, slots=True)
class BillingSection:
    """README "The billing section", read from the month's running totals."""

    team: str
    plan: str
    seats: int
    interval: str
    stripe_customer: str | None
    period_start: datetime
    period_end: datetime
    free_granted: int
    free_spent: int
    free_held: int
    free_available: int
    additional_limit: int
    additional_limit_usd: Decimal
    additional_spent: int
    additional_held: int
    additional_available: int
    additional_spent_usd: Decimal
    additional_billed: int
    unit_price: Decimal
    currency: str
    recent_charges: list[ChargeRow]
    members: list[MemberSpend]

    @property
    def held(self) -> int:
        return self.free_held + self.additional_held
