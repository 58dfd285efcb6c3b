"""Postgres connections: one pool per process, UTC sessions."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A plain connection or one borrowed from a pool: both run the same queries.
Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"timezone": "UTC", "application_name": "tokens"},
    )
    assert pool is not None
    return pool
