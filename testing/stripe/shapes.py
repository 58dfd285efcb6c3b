"""What every part of the fake shares: the JSON type, fault targets, the records it keeps
(requests, pay attempts, saved responses) and Stripe's constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

DEFAULT_BASE = "https://api.stripe.test"


DEFAULT_API_KEY = "sk_test_fake"


API_VERSION = "2026-10-28.endive"


Json = dict[str, Any]


Target = str | tuple[str, str]


# Stripe's minimum charge amounts (smallest unit); an invoice charged automatically for
# less is marked paid and the amount is added to the customer's balance.
MINIMUM_CHARGE: dict[str, int] = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50}


class PayAttempt(NamedTuple):
    """A pay request that reached an invoice: the invoice's status then, and since when."""

    moment: int  # StripeFake.moment when it arrived
    invoice: str
    status: str
    status_since: int  # StripeFake.moment of the invoice's last status change
    bill_id: str | None  # metadata tokens_bill_id


class RecordedRequest(NamedTuple):
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None


@dataclass
class _Saved:
    method: str
    path: str
    params: dict[str, Any]
    status: int = 0
    body: Json | None = None
    request_id: str = ""
    in_flight: bool = False
    extra_headers: dict[str, str] | None = None
