"""Time in the tests: one way to write a moment, one clock a test can move.

at("2026-03-10T12:00:00")     # an ISO string (a trailing Z or none: UTC)
clock = FrozenClock(at("2026-03-10"))
clock()                        # the moment it shows; `clock.now = ...` moves it
"""

from __future__ import annotations

from datetime import UTC, datetime

Moment = str | datetime


def at(value: Moment) -> datetime:
    """A moment, aware: an ISO string without an offset is UTC; a datetime is kept."""
    if isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def epoch(value: Moment) -> int:
    """The moment as Stripe writes it: whole seconds since the epoch."""
    return int(at(value).timestamp())


def iso(value: Moment) -> str:
    """The moment as the CLI takes it: ISO with a trailing Z."""
    return at(value).isoformat().replace("+00:00", "Z")


class FrozenClock:
    """A clock the code under test calls; it shows `now` until the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
