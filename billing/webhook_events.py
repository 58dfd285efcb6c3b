"""The stripe_events table (migration 0004) as a SQLModel class."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Column, Index, Integer, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from ledger.models import ts_column


class StripeEvent(SQLModel, table=True):
    __tablename__ = "stripe_events"
    __table_args__ = (
        CheckConstraint("id <> ''", name="stripe_events_id_valid"),
        CheckConstraint("deliveries > 0", name="stripe_events_deliveries_pos"),
        CheckConstraint(
            "(handled_at IS NULL) = (result IS NULL)", name="stripe_events_handled_with_result"
        ),
        Index(
            "stripe_events_unhandled_idx",
            "received_at",
            postgresql_where=text("handled_at IS NULL"),
        ),
    )

    id: str = Field(sa_column=Column(Text, primary_key=True))
    type: str = Field(sa_column=Column(Text, nullable=False))
    object_id: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    livemode: bool = Field(sa_column=Column(Boolean, nullable=False))
    created_at: datetime = Field(sa_column=ts_column())
    received_at: datetime = Field(sa_column=ts_column())
    deliveries: int = Field(
        default=1, sa_column=Column(Integer, nullable=False, server_default=text("1"))
    )
    handled_at: datetime | None = Field(default=None, sa_column=ts_column(nullable=True))
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    payload: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
