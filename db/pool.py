"""Postgres connections: one pool per process, UTC sessions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A plain connection or one borrowed from a pool: both run the same queries.
if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Conn = asyncpg.Connection | PoolConnectionProxy


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


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"timezone": "UTC", "application_name": "tokens"},
        connection_class=PooledConnection,
    )
    assert pool is not None
    return pool
