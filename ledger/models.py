"""The ledger's tables as SQLModel classes: the schema's single description.

`db/migrations/*.sql` must produce exactly these tables; a test diffs the
two. Constraints are declared here too, under the names the migrations use,
so both sides agree on what makes a balance wrong.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Numeric,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlmodel import Field, SQLModel


def ts_column(nullable: bool = False) -> Column[datetime]:
    """A `timestamptz` column: every instant in the schema is UTC-aware."""
    return Column(DateTime(timezone=True), nullable=nullable)


class Plan(SQLModel, table=True):
    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint("free_tokens >= 0", name="plans_free_tokens_nonneg"),
        CheckConstraint("unit_price > 0", name="plans_unit_price_pos"),
        CheckConstraint("threshold_cents > 0", name="plans_threshold_pos"),
    )

    name: str = Field(sa_column=Column(Text, primary_key=True))
    free_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    per_seat: bool
    once: bool
    additional_allowed: bool
    unit_price: Decimal = Field(sa_column=Column(Numeric(12, 6), nullable=False))
    threshold_cents: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(sa_column=Column(Text, nullable=False))


class Team(SQLModel, table=True):
    __tablename__ = "teams"
    __table_args__ = (
        CheckConstraint("id <> '' AND length(id) <= 200", name="teams_id_valid"),
        CheckConstraint("seats >= 0", name="teams_seats_nonneg"),
        CheckConstraint("billing_interval IN ('month', 'year')", name="teams_interval_valid"),
        CheckConstraint("additional_limit >= 0", name="teams_limit_nonneg"),
    )

    id: str = Field(sa_column=Column(Text, primary_key=True))
    plan: str = Field(sa_column=Column(Text, ForeignKey("plans.name"), nullable=False))
    seats: int = Field(sa_column=Column(Integer, nullable=False))
    billing_interval: str = Field(sa_column=Column(Text, nullable=False))
    anchor: datetime = Field(sa_column=ts_column())
    stripe_customer: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    additional_limit: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default=text("0"))
    )
    trial_granted: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    stripe_subscription: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    subscription_ended_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    subscription_created: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())


def _total(name: str) -> Any:
    return Field(
        default=0,
        sa_column=Column(name, BigInteger, nullable=False, server_default=text("0")),
    )


class BillingMonth(SQLModel, table=True):
    __tablename__ = "billing_months"
    __table_args__ = (
        CheckConstraint("period_end > period_start", name="billing_months_period_valid"),
        CheckConstraint("unit_price > 0", name="billing_months_unit_price_pos"),
        CheckConstraint(
            "free_granted >= 0 AND free_held >= 0 AND free_spent >= 0 AND additional_held >= 0"
            " AND additional_spent >= 0 AND additional_billed >= 0",
            name="billing_months_totals_nonneg",
        ),
        CheckConstraint(
            "free_held + free_spent <= free_granted", name="billing_months_free_within_grant"
        ),
        CheckConstraint(
            "additional_billed <= additional_spent", name="billing_months_billed_within_spent"
        ),
        Index(
            "billing_months_unbilled_idx",
            "period_end",
            postgresql_where=text("additional_spent > additional_billed"),
        ),
        Index("billing_months_open_idx", "period_end", postgresql_where=text("closed_at IS NULL")),
    )

    team_id: str = Field(sa_column=Column(Text, ForeignKey("teams.id"), primary_key=True))
    period_start: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    period_end: datetime = Field(sa_column=ts_column())
    free_granted: int = Field(sa_column=Column(BigInteger, nullable=False))
    free_held: int = _total("free_held")
    free_spent: int = _total("free_spent")
    additional_held: int = _total("additional_held")
    additional_spent: int = _total("additional_spent")
    additional_billed: int = _total("additional_billed")
    closed_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    # The price in force when the month opened: its tokens are billed at it.
    unit_price: Decimal = Field(sa_column=Column(Numeric(12, 6), nullable=False))
    currency: str = Field(sa_column=Column(Text, nullable=False))


class Charge(SQLModel, table=True):
    __tablename__ = "charges"
    __table_args__ = (
        CheckConstraint(
            "idempotency_key <> '' AND length(idempotency_key) <= 255", name="charges_key_valid"
        ),
        CheckConstraint("quantity > 0", name="charges_quantity_pos"),
        CheckConstraint("tokens > 0", name="charges_tokens_pos"),
        CheckConstraint("free_tokens >= 0", name="charges_free_nonneg"),
        CheckConstraint("additional_tokens >= 0", name="charges_additional_nonneg"),
        CheckConstraint(
            "state IN ('held', 'captured', 'released', 'expired')", name="charges_state_valid"
        ),
        CheckConstraint("free_tokens + additional_tokens = tokens", name="charges_split_adds_up"),
        CheckConstraint(
            "(state = 'held') = (settled_at IS NULL)", name="charges_settled_iff_not_held"
        ),
        UniqueConstraint("team_id", "idempotency_key", name="charges_team_key_unique"),
        ForeignKeyConstraint(
            ["team_id", "period_start"],
            ["billing_months.team_id", "billing_months.period_start"],
        ),
        CheckConstraint("member <> '' AND length(member) <= 255", name="charges_member_valid"),
        Index("charges_held_at_idx", "held_at", postgresql_where=text("state = 'held'")),
        Index("charges_team_period_idx", "team_id", "period_start", "id"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, Identity(always=True), primary_key=True),
    )
    team_id: str = Field(sa_column=Column(Text, nullable=False))
    period_start: datetime = Field(sa_column=ts_column())
    idempotency_key: str = Field(sa_column=Column(Text, nullable=False))
    action: str = Field(sa_column=Column(Text, nullable=False))
    quantity: int = Field(sa_column=Column(Integer, nullable=False))
    tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    free_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    additional_tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    state: str = Field(sa_column=Column(Text, nullable=False))
    job_id: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    lead_id: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    held_at: datetime = Field(sa_column=ts_column())
    settled_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    member: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class LimitChange(SQLModel, table=True):
    __tablename__ = "limit_changes"
    __table_args__ = (
        CheckConstraint("actor <> ''", name="limit_changes_actor_valid"),
        CheckConstraint("role = 'admin'", name="limit_changes_role_admin"),
        CheckConstraint("new_limit >= 0", name="limit_changes_new_nonneg"),
        Index("limit_changes_team_idx", "team_id", "id"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, Identity(always=True), primary_key=True),
    )
    team_id: str = Field(sa_column=Column(Text, ForeignKey("teams.id"), nullable=False))
    actor: str = Field(sa_column=Column(Text, nullable=False))
    role: str = Field(sa_column=Column(Text, nullable=False))
    old_limit: int = Field(sa_column=Column(BigInteger, nullable=False))
    new_limit: int = Field(sa_column=Column(BigInteger, nullable=False))
    changed_at: datetime = Field(sa_column=ts_column())


class MemberCap(SQLModel, table=True):
    __tablename__ = "member_caps"
    __table_args__ = (CheckConstraint("cap >= 0", name="member_caps_cap_nonneg"),)

    team_id: str = Field(sa_column=Column(Text, ForeignKey("teams.id"), primary_key=True))
    member: str = Field(sa_column=Column(Text, primary_key=True))
    cap: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(sa_column=ts_column())


class MemberCapChange(SQLModel, table=True):
    __tablename__ = "member_cap_changes"
    __table_args__ = (
        CheckConstraint("actor <> ''", name="member_cap_changes_actor_valid"),
        CheckConstraint("role = 'admin'", name="member_cap_changes_role_admin"),
        CheckConstraint("new_cap >= 0", name="member_cap_changes_new_nonneg"),
        Index("member_cap_changes_team_idx", "team_id", "id"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, Identity(always=True), primary_key=True),
    )
    team_id: str = Field(sa_column=Column(Text, ForeignKey("teams.id"), nullable=False))
    member: str = Field(sa_column=Column(Text, nullable=False))
    actor: str = Field(sa_column=Column(Text, nullable=False))
    role: str = Field(sa_column=Column(Text, nullable=False))
    old_cap: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    new_cap: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    changed_at: datetime = Field(sa_column=ts_column())


class MemberMonth(SQLModel, table=True):
    __tablename__ = "member_months"
    __table_args__ = (
        CheckConstraint("held >= 0 AND spent >= 0", name="member_months_totals_nonneg"),
        ForeignKeyConstraint(
            ["team_id", "period_start"],
            ["billing_months.team_id", "billing_months.period_start"],
        ),
    )

    team_id: str = Field(sa_column=Column(Text, primary_key=True))
    period_start: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    member: str = Field(sa_column=Column(Text, primary_key=True))
    held: int = _total("held")
    spent: int = _total("spent")


class Alert(SQLModel, table=True):
    """A usage alert (migration 0005, README "Usage alerts"), and its webhook delivery state."""

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint("kind IN ('free', 'additional')", name="alerts_kind_valid"),
        CheckConstraint("level IN (80, 100)", name="alerts_level_valid"),
        CheckConstraint("spent >= 0", name="alerts_spent_nonneg"),
        CheckConstraint("granted_or_limit > 0", name="alerts_base_pos"),
        UniqueConstraint("team_id", "period_start", "kind", "level", name="alerts_once"),
        ForeignKeyConstraint(
            ["team_id", "period_start"],
            ["billing_months.team_id", "billing_months.period_start"],
        ),
        Index("alerts_team_idx", "team_id", "id"),
        Index(
            "alerts_undelivered_idx",
            "next_attempt_at",
            postgresql_where=text("delivered_at IS NULL"),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, Identity(always=True), primary_key=True),
    )
    public_id: UUID = Field(
        sa_column=Column(
            PG_UUID(as_uuid=True),
            nullable=False,
            unique=True,
            server_default=text("gen_random_uuid()"),
        )
    )
    team_id: str = Field(sa_column=Column(Text, nullable=False))
    period_start: datetime = Field(sa_column=ts_column())
    kind: str = Field(sa_column=Column(Text, nullable=False))
    level: int = Field(sa_column=Column(Integer, nullable=False))
    spent: int = Field(sa_column=Column(BigInteger, nullable=False))
    granted_or_limit: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )
    attempts: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default=text("0"))
    )
    next_attempt_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    delivered_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
