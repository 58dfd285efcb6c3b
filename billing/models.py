"""The bills and bill_charges tables (migrations 0002, 0003) as SQLModel classes.

They describe the schema (tests/test_schema.py diffs them against the migrations);
the code reads bills as billing/rows.py's `BillRow`, which needs no SQLAlchemy.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
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
        CheckConstraint(
            "status IN ('unsent', 'sending', 'open', 'paid', 'payment_failed', 'void',"
            " 'uncollectible', 'failed', 'reissued')",
            name="bills_status_valid",
        ),
        CheckConstraint(
            "collection_method IN ('charge_automatically', 'send_invoice')",
            name="bills_collection_method_valid",
        ),
        Index(
            "bills_active_idx",
            "id",
            postgresql_where=text(
                "status IN ('unsent', 'sending', 'failed', 'open', 'payment_failed',"
                " 'uncollectible')"
            ),
        ),
        Index("bills_status_idx", "status", "id"),
        Index(
            "bills_reissue_of_key",
            "reissue_of",
            unique=True,
            postgresql_where=text("reissue_of IS NOT NULL"),
        ),
        Index("bills_team_idx", "team_id", "id"),
        Index(
            "bills_invoice_idx",
            "stripe_invoice_id",
            postgresql_where=text("stripe_invoice_id IS NOT NULL"),
        ),
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
    status: str = Field(
        default="sending",
        sa_column=Column(Text, nullable=False, server_default=text("'sending'::text")),
    )
    lease_token: UUID | None = Field(default=None, sa_column=Column(PG_UUID(as_uuid=True)))
    key_gen: int = Field(
        default=1, sa_column=Column(Integer, nullable=False, server_default=text("1"))
    )
    collection_method: str | None = Field(default=None, sa_column=_text())
    stripe_invoice_created: int | None = Field(default=None, sa_column=Column(BigInteger))
    decline_code: str | None = Field(default=None, sa_column=_text())
    declines: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default=text("0"))
    )
    last_declined_at: datetime | None = Field(default=None, sa_column=ts_column(True))
    next_pay_at: datetime | None = Field(default=None, sa_column=ts_column(True))
    reissue_of: int | None = Field(
        default=None, sa_column=Column(BigInteger, ForeignKey("bills.id"))
    )


class BillCharge(SQLModel, table=True):
    """Which bill billed a charge's additional tokens (one bill per charge)."""

    __tablename__ = "bill_charges"
    __table_args__ = (Index("bill_charges_bill_idx", "bill_id", "charge_id"),)

    charge_id: int = Field(sa_column=Column(BigInteger, ForeignKey("charges.id"), primary_key=True))
    bill_id: int = Field(sa_column=Column(BigInteger, ForeignKey("bills.id"), nullable=False))
