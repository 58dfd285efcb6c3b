"""Chaos: Postgres restarted, Redis crashed, a worker SIGKILLed, each in the middle of a run.

Each test queues a few hundred enrich leads for a team whose tokens run out
before the last lead, runs workers with slow sandbox providers, breaks one
thing mid-run, and checks the outcome an operator cares about: every job
ended (none failed), every lead that fitted is captured exactly once, the
rest are refused, nothing is left held, running totals equal the charges.

The servers are this module's own (a data dir of their own), never the
session's shared ones: restarting them must not disturb other tests.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker

import worker.settings as worker_settings
from db.migrate import migrate
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from runtime.config import Settings
from runtime.embedded import ensure_postgres, ensure_redis, stop_postgres, stop_redis, stop_servers
from runtime.transient import is_transient
from tests.conftest import with_database
from tests.factories import make_team
from tests.process import TOKENS_BIN
from worker.client import enqueue, result
from worker.payloads import Lead
from worker.providers import Providers, SearchResult
from worker.queue import OUTAGE_KEY_PREFIX

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
LEADS = 200
FITS = 180  # 250 free + 1,550 additional tokens = 180 enrichments of 10
_names = itertools.count()


@dataclass
class Servers:
    data_dir: Path
    server_dsn: str
    database_url: str
    redis_url: str


@pytest.fixture(scope="module")
def chaos_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tokens-chaos-", dir="/tmp"))
    try:
        yield path
    finally:
        stop_servers(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def servers(chaos_dir: Path) -> AsyncIterator[Servers]:
    dsn = await asyncio.to_thread(ensure_postgres, chaos_dir)
    redis_url = await asyncio.to_thread(ensure_redis, chaos_dir)
    name = f"chaos_{os.getpid()}_{next(_names)}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(dsn, name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield Servers(chaos_dir, dsn, with_database(dsn, name), redis_url)
    dsn = await asyncio.to_thread(ensure_postgres, chaos_dir)  # a test may leave it stopped
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def redis(servers: Servers) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(servers.redis_url))
    await pool.flushdb()
    yield pool
    await pool.aclose()


async def _ledger(url: str) -> tuple[asyncpg.Pool, Ledger]:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None
    ledger = Ledger(pool, DEFAULT_CATALOG)
    await ledger.sync_catalog()
    await make_team(ledger, limit=1550)
    return pool, ledger


async def _queue(redis: ArqRedis, prefix: str) -> list[str]:
    payload = {"leads": [{"id": f"l{i}", "email": f"p{i}@acme.io"} for i in range(LEADS)]}
    jobs = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=payload, job_id=prefix)
    # On disk before anything breaks (the append-only file is fsynced every second).
    await redis.execute_command("WAITAOF", 1, 0, 5000)
    return [j.job_id for j in jobs]


async def _count(url: str, sql: str) -> int | None:
    """One number from Postgres, or None while it is away."""
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except Exception as exc:
        if is_transient(exc):
            return None
        raise
    try:
        return int(await conn.fetchval(sql))
    except Exception as exc:
        if is_transient(exc):
            return None
        raise
    finally:
        await conn.close()


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)  # polling a condition, bounded by the deadline


def _counting_searches(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the enrich provider's searches per lead, for in-process workers."""
    searches: Counter[str] = Counter()
    build = worker_settings.build_providers

    def counting(settings: Settings, http: Any, **kwargs: Any) -> Providers:
        providers = build(settings, http, **kwargs)
        inner = providers.enrich

        class Counting:
            name = inner.name
            sandbox = inner.sandbox

            async def enrich(self, lead: Lead) -> SearchResult:
                searches[lead.id or "?"] += 1
                return await inner.enrich(lead)

        return Providers(ai=providers.ai, enrich=Counting(), verify=providers.verify)

    monkeypatch.setattr(worker_settings, "build_providers", counting)
    return searches


def _settings(servers: Servers, **extra: Any) -> Settings:
    base: dict[str, Any] = dict(
        database_url=servers.database_url,
        redis_url=servers.redis_url,
        sandbox_latency_ms=300,
        worker_concurrency=8,
        retry_backoff_seconds=0.05,
        outage_wait_seconds=0.5,
        log_level="WARNING",
        provider_timeout_seconds=1,  # within half of the short job timeouts used here
    )
    return Settings(**(base | extra))


def _workers(settings: Settings, n: int) -> tuple[list[Worker], list[asyncio.Task[None]]]:
    assert settings.redis_url is not None
    workers = [
        worker_settings.TokensWorker(
            **worker_settings.worker_kwargs(settings, settings.redis_url, burst=True)
        )
        for _ in range(n)
    ]
    return workers, [asyncio.create_task(w.main()) for w in workers]


async def _finish(workers: list[Worker], tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
    finally:
        for w in workers:
            await w.close()


async def _check_outcome(
    redis: ArqRedis, ledger: Ledger, pool: asyncpg.Pool, job_ids: list[str]
) -> dict[str, int]:
    """Every job ended; leads captured exactly once or refused; nothing held; no drift."""
    statuses: Counter[str] = Counter()
    for job_id in job_ids:
        out = await result(redis, job_id)  # raises if the job failed
        statuses[out["status"]] += 1
    assert statuses["refused"] == LEADS - FITS, statuses
    assert statuses["captured"] + statuses["already_charged"] == FITS, statuses
    assert set(statuses) <= {"captured", "already_charged", "refused"}, statuses
    rows = await pool.fetch("SELECT lead_id, state, tokens FROM charges ORDER BY lead_id")
    assert Counter(r["state"] for r in rows) == {"captured": FITS}
    assert len({r["lead_id"] for r in rows}) == FITS  # one charge per lead
    assert all(r["tokens"] == 10 for r in rows)
    assert await ledger.drift() == []
    return dict(statuses)


async def test_postgres_restarted_mid_run(
    servers: Servers, redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, ledger = await _ledger(servers.database_url)
    job_ids = await _queue(redis, "pg")
    searches = _counting_searches(monkeypatch)
    # One try per job: an outage that used up a try would fail the job for good.
    settings = _settings(servers, job_max_tries=1)
    workers, tasks = _workers(settings, 2)
    captured = "SELECT count(*) FROM charges WHERE state = 'captured'"

    async def started() -> bool:
        return (await _count(servers.database_url, captured) or 0) >= 40

    async def someone_requeued() -> bool:
        return bool(await redis.keys(OUTAGE_KEY_PREFIX + "*"))

    try:
        await _until("40 leads are captured", started)
        await asyncio.to_thread(stop_postgres, servers.data_dir, mode="immediate")  # a crash
        # Down long enough that jobs give up waiting in the job and go back to the queue.
        await _until("a job went back to the queue", someone_requeued)
        await asyncio.to_thread(ensure_postgres, servers.data_dir)
    finally:
        await _finish(workers, tasks, timeout_s=60)
    await pool.expire_connections()
    statuses = await _check_outcome(redis, ledger, pool, job_ids)
    assert statuses["captured"] >= FITS - 20  # at most a few results replayed
    requeued = [k async for k in redis.scan_iter(match=OUTAGE_KEY_PREFIX + "*")]
    assert requeued, "the outage never sent a job back to the queue"
    # A lead that searched before the outage was captured on the next run
    # from the search memo, not searched again.
    assert sum(searches.values()) == FITS and max(searches.values()) == 1
    await pool.close()


async def test_redis_crashed_mid_run(
    servers: Servers, redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, ledger = await _ledger(servers.database_url)
    job_ids = await _queue(redis, "rd")
    # A job whose start was lost with the crash runs again once arq's
    # in-progress mark expires (job timeout + 10 s): keep that short here.
    settings = _settings(servers, job_timeout_seconds=4, job_max_tries=3)
    workers, tasks = _workers(settings, 2)
    url_before = servers.redis_url

    async def started() -> bool:
        return ((await _count(servers.database_url, "SELECT count(*) FROM charges")) or 0) >= 40

    try:
        await _until("40 leads are charged", started)
        await asyncio.to_thread(stop_redis, servers.data_dir, kill=True)  # SIGKILL
        assert await asyncio.to_thread(ensure_redis, servers.data_dir) == url_before
    finally:
        await _finish(workers, tasks, timeout_s=60)
    await _check_outcome(redis, ledger, pool, job_ids)
    await pool.close()


def _env(servers: Servers, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENS_", "STRIPE_"))}
    return env | {
        "TOKENS_DATABASE_URL": servers.database_url,
        "TOKENS_REDIS_URL": servers.redis_url,
        **extra,
    }


async def test_worker_sigkilled_mid_run(servers: Servers, redis: ArqRedis) -> None:
    pool, ledger = await _ledger(servers.database_url)
    job_ids = await _queue(redis, "kill")
    extra = {
        "TOKENS_SANDBOX_LATENCY_MS": "300",
        "TOKENS_WORKER_CONCURRENCY": "8",
        # Its jobs are taken up again once arq's in-progress mark expires
        # (job timeout + 10 s): keep that short here.
        "TOKENS_JOB_TIMEOUT_SECONDS": "3",
        "TOKENS_PROVIDER_TIMEOUT_SECONDS": "1",
        "TOKENS_LOG_LEVEL": "WARNING",
    }
    doomed = await asyncio.create_subprocess_exec(
        str(TOKENS_BIN),
        "worker",
        env=_env(servers, **extra),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    held = "SELECT count(*) FROM charges WHERE state = 'held'"
    try:

        async def busy() -> bool:
            return (await _count(servers.database_url, held) or 0) >= 4

        await _until("the doomed worker holds tokens", busy, timeout_s=45)
        settings = _settings(servers, job_timeout_seconds=3)
        workers, tasks = _workers(settings, 1)

        async def started() -> bool:
            return ((await _count(servers.database_url, "SELECT count(*) FROM charges")) or 0) >= 40

        await _until("40 leads are charged", started)
        doomed.send_signal(signal.SIGKILL)  # mid-search: its holds are in Postgres
        assert await asyncio.wait_for(doomed.wait(), 10) == -signal.SIGKILL
        await _finish(workers, tasks, timeout_s=60)
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await asyncio.wait_for(doomed.wait(), 10)
    await _check_outcome(redis, ledger, pool, job_ids)
    await pool.close()
