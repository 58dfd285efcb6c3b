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


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"timezone": "UTC", "application_name": "tokens"},
    )
    assert pool is not None
    return pool
