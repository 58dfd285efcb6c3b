"""Input checks shared by the Python API and the CLI: refuse before writing anything."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ledger.errors import BadInput

INTERVALS = ("month", "year")
ROLES = ("admin", "member")
# fullmatch: `$` would also match before a trailing newline ("acme\n" is not "acme").
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,199}")
_MAX_QUANTITY = 1_000_000
_MAX_SEATS = 1_000_000
_MAX_LIMIT = 10**12
MAX_KEY = 255
_WHOLE = re.compile(r"[+-]?[0-9]{1,30}")
_MAX_ACTOR = 255


def team_id(value: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise BadInput(
            f"invalid team id {str(value)[:60]!r}: 1-200 characters, letters, digits and _.:@/+- "
            "(starting with a letter or digit)"
        )
    return value


def reachable_over_http(value: str) -> bool:
    """False for an id with a "." or ".." segment (`a/../b`): HTTP clients and
    proxies rewrite such paths (RFC 3986, 5.2.4), so /v1/teams/a/../b/billing
    arrives as /v1/teams/b/billing, another team's URL."""
    return not any(part in (".", "..") for part in value.split("/"))


def quantity(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"quantity must be a whole number, got {value!r}")
    if value <= 0:
        raise BadInput(f"quantity must be positive, got {value}")
    if value > _MAX_QUANTITY:
        raise BadInput(f"quantity {value} is above the maximum of {_MAX_QUANTITY}")
    return value


def seats(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"seats must be a whole number, got {value!r}")
    if value < 0:
        raise BadInput(f"seats cannot be negative, got {value}")
    if value > _MAX_SEATS:
        raise BadInput(f"seats {value} is above the maximum of {_MAX_SEATS}")
    return value


def interval(value: str) -> str:
    if value not in INTERVALS:
        raise BadInput(f"interval must be month or year, got {value!r}")
    return value


def role(value: str) -> str:
    if value not in ROLES:
        raise BadInput(f"role must be admin or member, got {value!r}")
    return value


def limit(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"limit must be a whole number of tokens, got {value!r}")
    if value < 0:
        raise BadInput(f"limit cannot be negative, got {value}")
    if value > _MAX_LIMIT:
        raise BadInput(f"limit {value} is above the maximum of {_MAX_LIMIT}")
    return value


def key(value: str) -> str:
    if not value or len(value) > MAX_KEY or not value.isprintable():
        raise BadInput(f"idempotency key must be 1-{MAX_KEY} printable characters")
    return value


def actor(value: str) -> str:
    """Who made a change, as the audit trail records it."""
    if not value.strip():
        raise BadInput("actor must name the user making the change")
    if len(value) > _MAX_ACTOR or not value.isprintable():
        raise BadInput(
            f"actor must be at most {_MAX_ACTOR} printable characters (no NUL, newline or tab)"
        )
    return value


def member(value: str) -> str:
    """A member of a team (the JWT's `sub`): who launched a job, whose spend a cap bounds."""
    if not value.strip():
        raise BadInput("member cannot be empty")
    if len(value) > _MAX_ACTOR or not value.isprintable():
        raise BadInput(
            f"member must be at most {_MAX_ACTOR} printable characters (no NUL, newline or tab)"
        )
    return value


def cap(value: int) -> int:
    """A member's monthly cap in tokens: 0 (spends nothing) or more."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"cap must be a whole number of tokens, got {value!r}")
    if value < 0:
        raise BadInput(f"cap cannot be negative, got {value}")
    if value > _MAX_LIMIT:
        raise BadInput(f"cap {value} is above the maximum of {_MAX_LIMIT}")
    return value


def stripe_customer(value: str) -> str:
    """A Stripe customer id (cus_...): one printable word."""
    if not value.strip():
        raise BadInput("stripe customer id cannot be empty")
    if len(value) > 255 or not value.isprintable() or any(c.isspace() for c in value):
        raise BadInput(
            f"stripe customer id {value[:60]!r} must be at most 255 printable characters, "
            "without spaces"
        )
    return value


# Every instant the ledger takes lies in this range: past its edges Postgres and
# Python part ways (asyncpg sends datetime.min as -infinity, year 10000 does not
# decode), and no billing month is that far from today.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # excluded


def moment(value: datetime, what: str = "timestamp") -> datetime:
    """A timezone-aware instant in [EARLIEST, LATEST), normalised to UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise BadInput(f"{what} {value.isoformat()} has no timezone")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is in year 0 in UTC
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise BadInput(
            f"{what} {value.isoformat()} is out of range: from "
            f"{EARLIEST.date().isoformat()} to before {LATEST.date().isoformat()} (UTC)"
        )
    return utc


def parse_moment(text: str, what: str = "timestamp") -> datetime:
    """ISO 8601 text to an aware UTC datetime in range; no offset means UTC."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"{what} {text!r} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return moment(parsed, what)


def parse_whole(text: str, what: str) -> int:
    """A CLI integer argument, with a message that names it."""
    # int() also takes "1_000" and other scripts' digits ("\uff17" is 7): not a typo's friend.
    if not _WHOLE.fullmatch(text.strip()):
        raise BadInput(f"{what} must be a whole number, got {text[:40]!r}")
    return int(text.strip(), 10)
