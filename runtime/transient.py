"""Is this error a database or Redis outage that will pass? And waiting one out.

A restart, a crash recovery, a failover or a managed minor upgrade takes
Postgres or Redis away for seconds. What a caller sees meanwhile:

- the connection drops under a query (`ConnectionDoesNotExistError`, a reset
  or refused socket, `InterfaceError` on a connection that is closed),
- the server answers but does not serve yet: SQLSTATE 57P03 "the database
  system is starting up" / "not yet accepting connections" / "in recovery
  mode" (`CannotConnectNowError`), or it is shutting down (57P01, 57P02),
- after a failover, a connection that still reaches the old primary, now a
  replica: 25006 "cannot execute ... in a read-only transaction",
- too many clients at once while everyone reconnects (53300),
- Redis: a refused or dropped connection, a timeout, LOADING (the
  append-only file is being read back), READONLY (a replica after failover).

Every one of those means "try the same thing again a little later": nothing
was written (a transaction that lost its connection rolls back), or it was
written and an idempotent retry finds it. Anything else (a refusal, bad
input, a bug) is not transient and must not be retried blindly.

The worker (worker/metering.py, worker/tasks.py) and the HTTP API (a 503 with
Retry-After instead of a 500) share this one classifier.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import redis.exceptions as redis_errors
import structlog

log = structlog.get_logger("tokens.transient")

T = TypeVar("T")

# SQLSTATEs of an outage (the whole 08 class, connection exceptions, is one too).
_TRANSIENT_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: the server is shutting down (fast/immediate stop)
        "57P02",  # crash_shutdown: another backend crashed, the server restarts
        "57P03",  # cannot_connect_now: starting up, not yet accepting, in recovery
        "25006",  # read_only_sql_transaction: a replica, after a failover
        "53300",  # too_many_connections: everyone reconnects at once after a restart
    }
)

_CLOSED_MESSAGES = ("connection is closed", "connection was closed", "connection has been lost")

_REDIS_TRANSIENT = (
    redis_errors.ConnectionError,  # BusyLoadingError (LOADING) included
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,  # MASTERDOWN included
)


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError):
        # "cannot call Connection.fetch(): connection is closed", but not "pool is
        # closing" (our own shutdown) nor misuse of a released connection.
        return any(m in str(exc) for m in _CLOSED_MESSAGES)
    if isinstance(exc, _REDIS_TRANSIENT):
        return True
    if isinstance(exc, redis_errors.WatchError) and "ConnectionError" in str(exc):
        # redis-py's answer to a connection lost inside WATCH ... EXEC (raised
        # without a cause): the transaction did not run, do it again.
        return True
    if isinstance(exc, PermissionError):
        return False  # a socket we may not open stays so
    # Refused, reset, broken pipe, a Unix socket that is gone while the server
    # restarts, a DNS hiccup, a connect or read timeout (TimeoutError is an OSError).
    return isinstance(exc, OSError)


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (or what it was raised from) is Postgres or Redis being away.

    Follows explicit causes (`raise X from outage`), not implicit contexts: an
    error raised while handling an outage is not itself an outage.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _is_transient_one(current):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def backoff(attempt: int, *, base: float = 0.1, cap: float = 2.0) -> float:
    """Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2**attempt)].

    Jitter spreads the reconnects of many waiting jobs over the interval instead
    of sending them all at the moment the server comes back.
    """
    return random.uniform(0.0, min(cap, base * 2.0**attempt))


# SQLSTATEs of a statement Postgres cancelled and rolled back because of other
# sessions: a statement or lock timeout, a deadlock, a serialization failure.
_CONTENTION_SQLSTATES = frozenset({"57014", "55P03", "40P01", "40001"})


def is_contention(exc: BaseException) -> bool:
    """True when Postgres cancelled the statement because of other sessions' locks
    (a timeout, a deadlock): nothing was written, and the same statement may pass
    a moment later. Not an outage: where only an outage is waited out, this is an
    error; a caller that must not give up (a capture) retries it anyway."""
    return isinstance(exc, asyncpg.PostgresError) and (
        getattr(exc, "sqlstate", None) in _CONTENTION_SQLSTATES
    )


async def ride_out(
    call: Callable[[], Awaitable[T]],
    *,
    until: float,
    what: str,
    on_wait: Callable[[BaseException], None] | None = None,
    retry_on: Callable[[BaseException], bool] = is_transient,
    **fields: object,
) -> T:
    """Run `call`; while it fails with an error `retry_on` accepts (by default a
    transient one), run it again with backoff.

    `until` is a `time.monotonic()` deadline: the last error is raised once
    the next wait would pass it. Any other error is raised at once. `call` must
    be safe to repeat (an idempotent hold, a settlement, a sweep).
    """
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if not retry_on(exc):
                raise
            delay = max(backoff(attempt), 0.05)
            if time.monotonic() + delay > until:
                raise
            if on_wait is not None:
                on_wait(exc)
            if attempt == 0:
                log.warning("outage_wait", what=what, error=_short(exc), **fields)
            attempt += 1
            await asyncio.sleep(delay)  # backoff while the server is away


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
