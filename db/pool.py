"""Postgres connections: one pool per process, UTC sessions, and a deadline on every wait.

Nothing waits for Postgres without a limit: borrowing a connection gives up
after `acquire_timeout` seconds (asyncpg's pool methods borrow without one, so
the pool sets it as the default of every borrow), and a statement after
`statement_timeout` (Postgres cancels it itself; asyncpg's own timer, a little
longer, covers a server that stopped answering). Both raise: the API answers
503 with Retry-After (api/errors.py); the worker waits out a TimeoutError as an
outage (runtime/transient.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

# A plain connection or one borrowed from a pool: both run the same queries.
if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Conn = asyncpg.Connection | PoolConnectionProxy

# Defaults of TOKENS_DB_ACQUIRE_TIMEOUT_SECONDS and TOKENS_DB_STATEMENT_TIMEOUT_SECONDS.
ACQUIRE_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_S = 30.0
# asyncpg's timer runs this much past Postgres' statement_timeout, so that a statement
# that is merely slow is cancelled by the server (the connection stays usable) and the
# client timer only fires when the server itself is gone.
CLIENT_MARGIN_S = 5.0


class PooledConnection(asyncpg.Connection):
    """A pooled connection given back without asyncpg's reset query.

    asyncpg resets every connection returned to its pool with one more round
    trip (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL`): as many round trips again as the queries themselves on the money
    path, which runs one statement per borrow. Nothing here leaves session
    state behind: settings are per transaction (`SET LOCAL`) or given at
    connect time, advisory locks are transaction locks, nothing LISTENs and
    cursors live inside transactions. An open transaction is still rolled
    back on release (asyncpg does that apart from the reset query).
    """

    def get_reset_query(self) -> str:
        return ""


class TimedPool(asyncpg.Pool):
    """An asyncpg pool whose every borrow has a deadline, `pool.fetchrow(...)` included."""

    __slots__ = ("acquire_timeout",)
    acquire_timeout: float

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext[Any]:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    acquire_timeout: float = ACQUIRE_TIMEOUT_S,
    statement_timeout: float = STATEMENT_TIMEOUT_S,
) -> asyncpg.Pool:
    """A pool of `max_size` connections: a borrow waits at most `acquire_timeout` seconds
    (then TimeoutError), a statement runs at most `statement_timeout` seconds (then
    QueryCanceledError from Postgres, or TimeoutError should the server not answer)."""
    pool = TimedPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        connect=None,
        setup=None,
        init=None,
        reset=None,
        loop=None,
        connection_class=PooledConnection,
        record_class=asyncpg.Record,
        command_timeout=statement_timeout + CLIENT_MARGIN_S,
        server_settings={
            "timezone": "UTC",
            "application_name": "tokens",
            "statement_timeout": str(int(statement_timeout * 1000)),
        },
    )
    pool.acquire_timeout = acquire_timeout
    await pool
    return pool
