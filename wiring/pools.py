"""Connections for one process: the Postgres pool and its Ledger, the arq pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg
import structlog

from db.migrate import migrate, pending
from db.pool import create_pool
from ledger.catalog import Catalog, load_catalog
from ledger.errors import NotMigrated, Unreachable
from ledger.service import Ledger
from runtime.config import Settings
from wiring.servers import database_url, redacted, redis_url

if TYPE_CHECKING:
    from arq.connections import ArqRedis

log = structlog.get_logger("tokens.app")


def catalog(settings: Settings) -> Catalog:
    return load_catalog(settings.catalog)


async def ensure_schema(pool: asyncpg.Pool, settings: Settings) -> None:
    """Embedded databases are ours: bring them to head. A configured one must be migrated
    explicitly (`tokens migrate`), so a deploy never changes a schema by surprise."""
    async with pool.acquire() as conn:
        todo = await pending(conn)
        if not todo:
            return
        if settings.database_url:
            raise NotMigrated(
                f"the database is not at head ({len(todo)} pending: {', '.join(todo)}): "
                "run `tokens migrate`"
            )
        result = await migrate(conn)
        log.info("migrated", applied=result.applied, head=result.head)


# Connecting failed: nothing listens, the server is starting or gone, or it
# turned us away (no such database, bad password).
CONNECT_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InterfaceError,
)


async def connect_pool(settings: Settings, *, max_size: int = 10) -> asyncpg.Pool:
    url = database_url(settings)
    try:
        return await create_pool(
            url,
            max_size=max_size,
            acquire_timeout=settings.db_acquire_timeout_seconds,
            statement_timeout=settings.db_statement_timeout_seconds,
        )
    except CONNECT_ERRORS as exc:
        raise Unreachable("Postgres", redacted(url), exc) from exc


@asynccontextmanager
async def open_ledger(settings: Settings, *, max_size: int = 10) -> AsyncIterator[Ledger]:
    cat = catalog(settings)
    pool = await connect_pool(settings, max_size=max_size)
    try:
        await ensure_schema(pool, settings)
        ledger = Ledger(pool, cat)
        await ledger.sync_catalog()
        yield ledger
    finally:
        await pool.close()


@asynccontextmanager
async def open_queue(settings: Settings) -> AsyncIterator[ArqRedis]:
    """The arq pool jobs are enqueued through; closed on the way out."""
    from arq.connections import RedisSettings, create_pool
    from redis.exceptions import RedisError

    url = redis_url(settings)
    try:
        redis = await create_pool(RedisSettings.from_dsn(url))
    except (OSError, RedisError) as exc:
        raise Unreachable("Redis", redacted(url), exc) from exc
    try:
        yield redis
    finally:
        await redis.aclose()
