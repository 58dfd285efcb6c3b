"""Real servers for the tests: embedded Postgres and Valkey, or the configured URLs.

Postgres: one server per session; the schema is migrated once into a
template database, and every test gets its own copy (`CREATE DATABASE ...
TEMPLATE`), so tests can commit, run concurrently and never see each other.
After every test the ledger's invariant is checked: running totals equal the
sum of the charges.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from db.migrate import migrate
from db.pool import create_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from testing.stripe import StripeFake
from tests.cli_helpers import Cli

# One template per test process: with `pytest -n`, workers may share a configured server.
TEMPLATE = f"tokens_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
_counter = itertools.count()


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    from runtime.embedded import stop_servers

    path = Path(tempfile.mkdtemp(prefix="tokens-test-", dir="/tmp"))
    yield path
    stop_servers(path)


@pytest.fixture(scope="session")
def server_dsn(data_dir: Path) -> str:
    """A DSN on the test Postgres server, for creating databases."""
    url = os.environ.get("TOKENS_DATABASE_URL")
    if url:
        return url
    from runtime.embedded import ensure_postgres

    return ensure_postgres(data_dir)


@pytest.fixture(scope="session")
def redis_url(data_dir: Path) -> str:
    url = os.environ.get("TOKENS_REDIS_URL")
    if url:
        return url
    from runtime.embedded import ensure_redis

    return ensure_redis(data_dir)


@pytest.fixture(scope="session")
async def template_db(server_dsn: str) -> str:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(server_dsn, TEMPLATE))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE


@pytest.fixture
async def database_url(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    finally:
        await admin.close()
    yield with_database(server_dsn, name)
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=20)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def ledger(pool: asyncpg.Pool) -> AsyncIterator[Ledger]:
    led = Ledger(pool, DEFAULT_CATALOG)
    await led.sync_catalog()
    yield led
    drift = await led.drift()
    assert drift == [], f"running totals differ from the charges: {drift}"


@pytest.fixture
def cli(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    """The `tokens` CLI on this test's database (nothing embedded starts)."""
    monkeypatch.setenv("TOKENS_DATABASE_URL", database_url)
    monkeypatch.delenv("TOKENS_LOG_LEVEL", raising=False)
    return Cli(capsys)


@pytest.fixture
def stripe_fake() -> Iterator[StripeFake]:
    """A fresh StripeFake on https://api.stripe.test with key sk_test_fake."""
    with StripeFake() as fake:
        yield fake
