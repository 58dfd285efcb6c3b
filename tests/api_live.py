"""`tokens serve` as a real process on a test database, for tests that need real HTTP
(schemathesis, the browser)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from db.pool import create_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from tests.api_helpers import SECRET, WEBHOOK_SECRET
from tests.conftest import with_database
from tests.factories import make_team
from tests.process import TOKENS_BIN

ROOT = Path(__file__).resolve().parent.parent
TOKENS = [str(TOKENS_BIN)]  # the installed executable, as users run it
_n = itertools.count()


@dataclass(frozen=True)
class LiveApi:
    base_url: str
    database_url: str
    redis_url: str
    process: subprocess.Popen[str]
    log: Path  # the server's stdout and stderr

    def server_log(self) -> str:
        return self.log.read_text()

    def env(self) -> dict[str, str]:
        return env_for(self.database_url, self.redis_url)


def env_for(database_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENS_", "STRIPE_"))}
    return env | {
        "TOKENS_DATABASE_URL": database_url,
        "TOKENS_REDIS_URL": redis_url,
        "TOKENS_APP_SECRET": SECRET,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TOKENS_LOG_LEVEL": "WARNING",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def seed(ledger: Ledger, now: datetime) -> None:
    """Two teams in their current billing month; acme has free and additional charges."""
    await make_team(ledger, "acme", seats=2, at=now, limit=1000, actor="setup")
    await make_team(ledger, "other", seats=2, at=now)
    # 30 charges, 610 tokens: 500 free, then 110 additional.
    for n in range(30):
        action, quantity = [("ai_sequence", 1), ("enrich", 1), ("debounce", 1)][n % 3]
        await ledger.charge("acme", action, quantity, key=f"seed-{n}", at=now)


async def wait_ready(base_url: str, proc: subprocess.Popen[str], within_s: float = 60) -> None:
    """Poll /healthz until the server answers (readiness, not a fixed sleep)."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"tokens serve exited with {proc.returncode}")
            try:
                if (await c.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("tokens serve did not become ready")


@pytest.fixture(scope="module")
async def live_api(server_dsn: str, template_db: str, redis_url: str) -> AsyncIterator[LiveApi]:
    async with running_api(server_dsn, template_db, redis_url) as live:
        yield live


@asynccontextmanager
async def running_api(
    server_dsn: str, template_db: str, redis_url: str, *serve_args: str, **env: str
) -> AsyncIterator[LiveApi]:
    """`tokens serve [serve_args]` on a seeded copy of the template database, until the
    block ends; then stopped with SIGTERM, which must be a clean shutdown."""
    name = f"live_{os.getpid()}_{next(_n)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    finally:
        await admin.close()
    dsn = with_database(server_dsn, name)
    pool = await create_pool(dsn, max_size=2)
    try:
        ledger = Ledger(pool, DEFAULT_CATALOG)
        await ledger.sync_catalog()
        await seed(ledger, datetime.now(UTC))
    finally:
        await pool.close()
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="tokens-serve-", suffix=".log", dir="/tmp")[1])
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [*TOKENS, "serve", "--host", "127.0.0.1", "--port", str(port), *serve_args],
        env=env_for(dsn, redis_url) | env,
        cwd=ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, proc)
        yield LiveApi(base, dsn, redis_url, proc, log_path)
    finally:
        proc.terminate()
        code: int | None
        try:
            code = await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        log_file.close()
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()
        # SIGTERM is a clean shutdown (running requests finish, the lifespan closes the
        # pools); uvicorn then re-raises the signal, as a process stopped by it exits.
        log = await asyncio.to_thread(log_path.read_text)
        assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in log, log
        await asyncio.to_thread(log_path.unlink)  # kept only when something went wrong
