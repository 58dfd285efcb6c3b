"""The HTTP API and the read behind it: bulk enqueue and the billing section.

1. `enqueue_10k_ms`: one POST /v1/teams/{team}/jobs with 10,000 leads, request to
   response (validation, the batched Lua enqueue, the 10,000-job answer), median of
   a few runs; next to the same jobs queued by the client code alone
   (`worker.client.enqueue`) and by arq's `enqueue_job` one job at a time.
2. GET /v1/teams/{team}/billing with C concurrent keep-alive connections for a fixed
   time: p50, p99 and requests/s, against the bare `Ledger.billing` call with the same
   concurrency and pool size in the same run. The client is a minimal HTTP/1.1 reader
   on asyncio streams, so that it costs the measurement little.
3. `billing_read`: `Ledger.billing` called in a row for a team with 1,000,000 charges
   in its month (100,000 quick): it reads the month's running totals and the newest
   charges by index, so its time must not grow with the history.

    python -m bench api [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
from arq.connections import ArqRedis, RedisSettings, create_pool

from bench.servers import percentile
from db.pool import create_pool as create_pg_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from worker.client import enqueue
from worker.queue import QUEUE

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-app-secret-0123456789abcdef0123"
TEAM = "bench-api"
POOL_SIZE = 20  # what `tokens serve` opens (api/app.py)
LEADS = 10_000
BILLING_TEAM = "bench-billing"
BILLING_CALLS = 500
LEDGER_CHARGES = 300  # made by the Ledger; the rest by one INSERT


def _leads(n: int, tag: str) -> dict[str, Any]:
    return {"leads": [{"id": f"{tag}-{i}", "email": f"p{i}@bench.test"} for i in range(n)]}


def _token(role: str = "service") -> str:
    claims = {"sub": "bench", "role": role, "team": TEAM, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _serve(dsn: str, redis_url: str) -> tuple[asyncio.subprocess.Process, int]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENS_", "STRIPE_"))}
    env |= {
        "TOKENS_DATABASE_URL": dsn,
        "TOKENS_REDIS_URL": redis_url,
        "TOKENS_APP_SECRET": SECRET,
        "TOKENS_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cli.main", "serve", "--port", str(port)),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        while time.monotonic() < deadline:
            try:
                if (await c.get("/healthz")).status_code == 200:
                    return proc, port
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("tokens serve did not start")


async def _bench_enqueue(port: int, redis: ArqRedis, runs: int) -> dict[str, Any]:
    http_ms: list[float] = []
    headers = {"Authorization": f"Bearer {_token()}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        for n in range(runs):
            body = {"action": "debounce", "payload": _leads(LEADS, f"h{n}")}
            t0 = time.perf_counter()
            response = await c.post(f"/v1/teams/{TEAM}/jobs", json=body, headers=headers)
            http_ms.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 202, response.text
            assert len(response.json()["jobs"]) == LEADS
            await redis.flushdb()
    client_ms: list[float] = []
    for n in range(runs):
        t0 = time.perf_counter()
        jobs = await enqueue(
            redis, DEFAULT_CATALOG, TEAM, "debounce", payload=_leads(LEADS, f"c{n}")
        )
        client_ms.append((time.perf_counter() - t0) * 1000)
        assert all(j.queued for j in jobs)
        await redis.flushdb()
    # arq's own enqueue_job, one round trip (WATCH/EXISTS/MULTI/EXEC) per job: the old path.
    t0 = time.perf_counter()
    for i in range(LEADS):
        await redis.enqueue_job(
            "debounce",
            TEAM,
            {"id": f"o{i}", "email": f"p{i}@bench.test"},
            _job_id=f"one-{i}",
            _queue_name=QUEUE,
        )
    one_by_one_ms = (time.perf_counter() - t0) * 1000
    await redis.flushdb()
    return {
        "enqueue_10k_ms": round(statistics.median(http_ms), 1),
        "enqueue_10k_runs_ms": [round(x, 1) for x in http_ms],
        "enqueue_10k_client_ms": round(statistics.median(client_ms), 1),
        "enqueue_10k_one_by_one_ms": round(one_by_one_ms, 1),
    }


async def _drive(
    call: Callable[[], Awaitable[None]], concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
    }


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends the same GET again and again
    (reopened if the server closed it while idle: uvicorn keeps idle ones 5 s)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bytes,
        port: int,
    ):
        self.reader, self.writer, self.request, self.port = reader, writer, request, port

    async def get(self) -> None:
        if self.reader.at_eof() or self.writer.is_closing():
            self.writer.close()
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")


async def _connections(port: int, n: int) -> list[_Connection]:
    request = (
        f"GET /v1/teams/{TEAM}/billing HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {_token('member')}\r\n\r\n"
    ).encode()
    out = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out.append(_Connection(reader, writer, request, port))
    return out


async def _bench_billing(
    port: int, ledger: Ledger, concurrency: int, seconds: float
) -> dict[str, Any]:
    conns = await _connections(port, concurrency)
    free = asyncio.Queue[_Connection]()
    for conn in conns:
        free.put_nowait(conn)

    async def http_call() -> None:
        conn = await free.get()
        try:
            await conn.get()
        finally:
            free.put_nowait(conn)

    async def bare_call() -> None:
        await ledger.billing(TEAM, at=datetime.now(UTC))

    await _drive(http_call, concurrency, 0.5)  # warm-up: both processes' caches and pools
    http = await _drive(http_call, concurrency, seconds)
    http1 = await _drive(http_call, 1, seconds / 2)
    await _drive(bare_call, concurrency, 0.5)
    bare = await _drive(bare_call, concurrency, seconds)
    bare1 = await _drive(bare_call, 1, seconds / 2)
    for conn in conns:
        conn.writer.close()
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "pool_size": POOL_SIZE,
        "http": http,
        "ledger": bare,
        "added_p50_ms": round(http["p50_ms"] - bare["p50_ms"], 3),
        "c1": {
            "http": http1,
            "ledger": bare1,
            "added_p50_ms": round(http1["p50_ms"] - bare1["p50_ms"], 3),
        },
    }


async def run(dsn: str, redis_url: str, *, quick: bool) -> dict[str, Any]:
    now = datetime.now(UTC)
    pool = await create_pg_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    proc: asyncio.subprocess.Process | None = None
    try:
        ledger = Ledger(pool, DEFAULT_CATALOG)
        await ledger.sync_catalog()
        await ledger.set_team(
            TEAM,
            plan="sales_engagement",
            seats=100,
            interval="month",
            anchor=datetime(2025, 1, 1, tzinfo=UTC),
            at=now,
        )
        await ledger.set_limit(TEAM, 10**9, actor="bench", role="admin", at=now)
        for n in range(200 if quick else 1_000):
            await ledger.charge(TEAM, "debounce", 1, key=f"api-{n}", at=now)
        await redis.flushdb()
        proc, port = await _serve(dsn, redis_url)
        enqueued = await _bench_enqueue(port, redis, 3 if quick else 5)
        print(
            f"  enqueue 10,000 leads: HTTP {enqueued['enqueue_10k_ms']} ms "
            f"(client code {enqueued['enqueue_10k_client_ms']} ms; arq one by one "
            f"{enqueued['enqueue_10k_one_by_one_ms']} ms)",
            flush=True,
        )
        billing = await _bench_billing(port, ledger, 32, 3.0 if quick else 8.0)
        h, b = billing["http"], billing["ledger"]
        print(
            f"  billing c32: HTTP p50 {h['p50_ms']} ms p99 {h['p99_ms']} ms {h['per_s']}/s; "
            f"Ledger.billing p50 {b['p50_ms']} ms p99 {b['p99_ms']} ms {b['per_s']}/s; "
            f"c1 added p50 {billing['c1']['added_p50_ms']} ms",
            flush=True,
        )
        return enqueued | {"billing": billing}
    finally:
        if proc is not None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
        await redis.aclose()
        await pool.close()


async def billing_read(dsn: str, *, quick: bool) -> dict[str, Any]:
    """`Ledger.billing` for a team with many charges in its month (JSON `billing_read`)."""
    charges = 100_000 if quick else 1_000_000
    at = datetime(2025, 1, 15, 12, tzinfo=UTC)
    pool = await create_pg_pool(dsn, min_size=1, max_size=2)
    try:
        ledger = Ledger(pool, DEFAULT_CATALOG)
        await ledger.sync_catalog()
        await ledger.set_team(
            BILLING_TEAM,
            plan="sales_engagement",
            seats=1_000,
            interval="month",
            anchor=datetime(2025, 1, 1, tzinfo=UTC),
            at=at,
        )
        await ledger.set_limit(BILLING_TEAM, 10**11, actor="bench", role="admin", at=at)
        for n in range(LEDGER_CHARGES):
            await ledger.charge(BILLING_TEAM, "debounce", 1, key=f"ledger-{n}", at=at)
        period_start = await pool.fetchval(
            "SELECT period_start FROM charges WHERE team_id = $1 LIMIT 1", BILLING_TEAM
        )
        # Released charges count in no running total, so the totals still match the charges.
        await pool.execute(
            """
            INSERT INTO charges (team_id, period_start, idempotency_key, action, quantity, tokens,
                                 free_tokens, additional_tokens, state, held_at, settled_at)
            SELECT $1, $2, 'bulk-' || g, 'debounce', 1, 1, 1, 0, 'released', $3, $3
            FROM generate_series(1, $4::int) AS g
            """,
            BILLING_TEAM,
            period_start,
            at,
            charges - LEDGER_CHARGES,
            timeout=600,
        )
        await pool.execute("ANALYZE charges")
        total = await pool.fetchval("SELECT count(*) FROM charges WHERE team_id = $1", BILLING_TEAM)
        latencies = []
        for _ in range(BILLING_CALLS):
            t = time.perf_counter()
            await ledger.billing(BILLING_TEAM, at=at)
            latencies.append((time.perf_counter() - t) * 1000)
        drift = await ledger.drift()
    finally:
        await pool.close()
    result = {
        "charges": int(total),
        "calls": BILLING_CALLS,
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "drift_rows": len(drift),
    }
    print(
        f"  Ledger.billing at {total:,} charges: p50 {result['p50_ms']} ms "
        f"p99 {result['p99_ms']} ms",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    from bench.servers import fresh_servers, quiet_logs

    parser = argparse.ArgumentParser(prog="python -m bench api", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, 100,000 charges")
    args = parser.parse_args(argv)
    quiet_logs()

    async def go() -> dict[str, Any]:
        async with fresh_servers() as servers:
            api = await run(servers.dsn, servers.redis_url(), quick=args.quick)
            return api | {"billing_read": await billing_read(servers.dsn, quick=args.quick)}

    print(json.dumps(asyncio.run(go()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
