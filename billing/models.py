"""The bills table (migration 0002) as a SQLModel class."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Numeric,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlmodel import Field, SQLModel

from ledger.models import ts_column  # also registers billing_months, which bills refer to

STEPS = ("created", "invoice_created", "item_added", "finalized", "paid")


def _text(nullable: bool = True) -> Column[str]:
    return Column(Text, nullable=nullable)


class Bill(SQLModel, table=True):
    __tablename__ = "bills"
    __table_args__ = (
        CheckConstraint("reason IN ('threshold', 'month_end')", name="bills_reason_valid"),
        CheckConstraint("tokens > 0", name="bills_tokens_pos"),
        CheckConstraint("unit_price > 0", name="bills_unit_price_pos"),
        CheckConstraint("amount_cents >= 0", name="bills_amount_nonneg"),
        CheckConstraint(
            "step IN ('created', 'invoice_created', 'item_added', 'finalized', 'paid')",
            name="bills_step_valid",
        ),
        CheckConstraint(
            "step = 'created' OR stripe_invoice_id IS NOT NULL",
            name="bills_invoice_once_created",
        ),
        CheckConstraint(
            "step IN ('created', 'invoice_created') OR stripe_invoice_item_id IS NOT NULL",
            name="bills_item_once_added",
        ),
        ForeignKeyConstraint(
            ["team_id", "period_start"],
            ["billing_months.team_id", "billing_months.period_start"],
        ),
        Index("bills_unsent_idx", "id", postgresql_where=text("step <> 'paid'")),
        Index("bills_team_idx", "team_id", "id"),
    )

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True)
    )
    public_id: UUID = Field(
        sa_column=Column(
            PG_UUID(as_uuid=True),
            nullable=False,
            unique=True,
            server_default=text("gen_random_uuid()"),
        )
    )
    team_id: str = Field(sa_column=_text(False))
    period_start: datetime = Field(sa_column=ts_column())
    period_end: datetime = Field(sa_column=ts_column())
    reason: str = Field(sa_column=_text(False))
    tokens: int = Field(sa_column=Column(BigInteger, nullable=False))
    unit_price: Decimal = Field(sa_column=Column(Numeric(12, 6), nullable=False))
    amount_cents: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(sa_column=_text(False))
    step: str = Field(
        default="created",
        sa_column=Column(Text, nullable=False, server_default=text("'created'::text")),
    )
    stripe_customer: str | None = Field(default=None, sa_column=_text())
    stripe_invoice_id: str | None = Field(default=None, sa_column=_text())
    stripe_invoice_item_id: str | None = Field(default=None, sa_column=_text())
    stripe_invoice_status: str | None = Field(default=None, sa_column=_text())
    attempts: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default=text("0"))
    )
    pay_attempts: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default=text("0"))
    )
    last_error: str | None = Field(default=None, sa_column=_text())
    error_code: str | None = Field(default=None, sa_column=_text())
    lease_until: datetime | None = Field(default=None, sa_column=ts_column(True))
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())
    sent_at: datetime | None = Field(default=None, sa_column=ts_column(True))
