"""Usage alerts as the ledger reads them (README "Usage alerts").

The alerts themselves are made in Postgres, by the trigger of
ledger/sql/alerts.sql, in the transaction of the charge that crossed a level.
This module only reads them: plain frozen rows, like ledger/results.py, and
the JSON every reader shows (command line, webhook, HTTP API).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ledger.results import _Row

KINDS = ("free", "additional")
LEVELS = (80, 100)

TEAM_ALERTS = """
SELECT * FROM alerts WHERE team_id = $1 ORDER BY id DESC
"""


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with a Z, as every timestamp the project prints."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class AlertRow(_Row):
    """One alert: `kind` ('free' / 'additional') reached `level` % in a billing month."""

    id: int
    public_id: UUID
    team_id: str
    period_start: datetime
    kind: str
    level: int
    spent: int
    granted_or_limit: int
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None

    @property
    def alert_id(self) -> str:
        return str(self.public_id)

    def payload(self) -> dict[str, Any]:
        """What the webhook receives (README "Usage alerts"), exactly these keys."""
        return {
            "alert_id": self.alert_id,
            "team": self.team_id,
            "kind": self.kind,
            "level": self.level,
            "period_start": iso(self.period_start),
            "spent": self.spent,
            "granted_or_limit": self.granted_or_limit,
        }

    def as_dict(self) -> dict[str, Any]:
        """The payload plus when it was made and its delivery (command line, API)."""
        return self.payload() | {
            "created_at": iso(self.created_at),
            "delivered_at": iso(self.delivered_at),
            "delivery_attempts": self.attempts,
        }
