"""The HTTP API and the read behind it: bulk enqueue and the billing section.

1. `enqueue_10k_ms`: one POST /v1/teams/{team}/jobs with 10,000 leads, request to
   response (validation, the batched Lua enqueue, the 10,000-job answer), median of
   a few runs; next to the same jobs queued by the client code alone
   (`worker.client.enqueue`) and by arq's `enqueue_job` one job at a time.
2. GET /v1/teams/{team}/billing at 1 and 32 concurrent keep-alive connections:
   requests/s, p50 and p99 against `tokens serve` (one process) and `tokens serve
   --workers N` (N processes on one port), and the bare `Ledger.billing` call in this
   process with the same concurrency and pool size. The three loads alternate round by
   round (the order reversed every round); each figure is the median over rounds with
   its min and max. The client is a minimal HTTP/1.1 reader on asyncio streams, so that
   it costs the measurement little.
3. `billing_read`: `Ledger.billing` called in a row for a team with 1,000,000 charges
   in its month (100,000 quick): it reads the month's running totals and the newest
   charges by index, so its time must not grow with the history.

    python -m bench api [--quick] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
from arq.connections import ArqRedis, RedisSettings, create_pool

from bench.servers import percentile, postgres_cpu_s, postmaster_of, spread
from db.pool import create_pool as create_pg_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from worker.client import enqueue
from worker.queue import QUEUE

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-app-secret-0123456789abcdef0123"
TEAM = "bench-api"
POOL_SIZE = 20  # what each `tokens serve` process opens (api/app.py)
CONCURRENCIES = (32, 1)
WORKERS = 2  # `tokens serve --workers`: the cores of the machine this was written on
LOADS = ("serve_1", "serve_n", "ledger")
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


@dataclass
class Served:
    """A `tokens serve` process on `port`; its stderr goes to `log`."""

    proc: asyncio.subprocess.Process
    port: int
    log: Path

    def pids(self) -> list[int]:
        """The processes that answer: the worker processes, or the server itself."""
        return _spawned_by(self.proc.pid) or [self.proc.pid]


async def _serve(dsn: str, redis_url: str, workers: int = 1) -> Served:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENS_", "STRIPE_"))}
    env |= {
        "TOKENS_DATABASE_URL": dsn,
        "TOKENS_REDIS_URL": redis_url,
        "TOKENS_APP_SECRET": SECRET,
        "TOKENS_LOG_LEVEL": "WARNING",
    }
    fd, name = tempfile.mkstemp(prefix="tokens-bench-serve-", suffix=".log", dir="/tmp")
    log = Path(name)
    try:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "cli.main", "serve", "--port", str(port)),
            *(("--workers", str(workers)) if workers > 1 else ()),
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=fd,
        )
    finally:
        os.close(fd)
    # Ready when every process has started its app (uvicorn logs it once per process).
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline and proc.returncode is None:
        text = await asyncio.to_thread(log.read_text)
        if text.count("Application startup complete") >= workers:
            return Served(proc, port, log)
        await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"tokens serve --workers {workers} did not start:\n{text}")


async def _stop(served: Served) -> None:
    served.proc.terminate()
    await asyncio.wait_for(served.proc.wait(), 60)
    served.log.unlink(missing_ok=True)


def _spawned_by(parent: int) -> list[int]:
    """uvicorn's worker processes of `parent` (from /proc; none where there is no /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` so far."""
    ticks = 0
    for pid in pids:
        with suppress(OSError):
            text = Path(f"/proc/{pid}/stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _owners(served: Served, conns: list[_Connection]) -> list[int]:
    """How many of `conns` each server process accepted, most first: with several
    processes on one port, whichever is awake accepts, and a burst of connects can
    land on one of them."""
    by_port: dict[int, int] = {}  # the client's port -> the server side's socket inode
    with suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].split(":")[1], 16) == served.port:
                by_port[int(f[2].split(":")[1], 16)] = int(f[9])
    counts = []
    for pid in served.pids():
        inodes = set()
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
        counts.append(sum(by_port.get(c.local_port) in inodes for c in conns))
    return sorted(counts, reverse=True)


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
) -> tuple[list[float], float]:
    """`call` in `concurrency` callers for `seconds`: its latencies (ms), the seconds."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends the same GET again and again."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes):
        self.reader, self.writer, self.request = reader, writer, request
        self.local_port: int = writer.get_extra_info("sockname")[1]

    async def get(self) -> None:
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
    """`n` fresh connections, each used once before the next opens (as a client's
    warm pool would be): opened in a burst, one server process would take most."""
    request = (
        f"GET /v1/teams/{TEAM}/billing HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {_token('member')}\r\n\r\n"
    ).encode()
    out = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = _Connection(reader, writer, request)
        await conn.get()
        out.append(conn)
    return out


async def _slot(
    load: str,
    served: dict[str, Served],
    ledger: Ledger,
    postmaster: int,
    concurrency: int,
    seconds: float,
) -> dict[str, Any]:
    """One load at one concurrency for `seconds`: its latencies, its rate, and the CPU
    seconds of this process (the client, or the client and the Ledger for the bare
    call), of the server processes and of Postgres. HTTP loads open fresh connections
    each time: uvicorn closes those idle for 5 s, and the other loads' turns are longer."""
    conns: list[_Connection] = []
    call: Callable[[], Awaitable[None]]
    if load == "ledger":
        pids: list[int] = []

        async def call() -> None:
            await ledger.billing(TEAM, at=datetime.now(UTC))

    else:
        pids = served[load].pids()
        conns = await _connections(served[load].port, concurrency)
        free = asyncio.Queue[_Connection]()
        for conn in conns:
            free.put_nowait(conn)

        async def call() -> None:
            conn = await free.get()
            try:
                await conn.get()
            finally:
                free.put_nowait(conn)

    client0, server0, pg0 = time.process_time(), _cpu_s(pids), postgres_cpu_s(postmaster)
    ms, elapsed = await _drive(call, concurrency, seconds)
    cpu = {
        "client": time.process_time() - client0,
        "server": _cpu_s(pids) - server0,
        "postgres": postgres_cpu_s(postmaster) - pg0,
    }
    owners = _owners(served[load], conns) if conns else []
    for conn in conns:
        conn.writer.close()
    return {
        "latencies": ms,
        "per_s": len(ms) / elapsed,
        "cpu_ms": {k: 1000 * v / max(len(ms), 1) for k, v in cpu.items()},
        "cores": sum(cpu.values()) / elapsed,
        "owners": owners,
    }


def _figures(slots: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "per_s": spread([s["per_s"] for s in slots], 1),
        "p50_ms": spread([percentile(s["latencies"], 50) for s in slots]),
        "p99_ms": spread([percentile(s["latencies"], 99) for s in slots]),
        # CPU ms per request, and the cores client, server and Postgres kept busy together.
        **{
            f"{who}_cpu_ms": spread([s["cpu_ms"][who] for s in slots])
            for who in ("client", "server", "postgres")
        },
        "cores": spread([s["cores"] for s in slots], 2),
    }
    if slots[0]["owners"]:
        out["connections_per_process"] = [s["owners"] for s in slots]
    return out


def _rate_over(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Each round's rate of `a` over its neighbour's in the same round."""
    return spread([x["per_s"] / y["per_s"] for x, y in zip(a, b, strict=True)])


def _added_p50(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Each round's p50 of `a` minus its neighbour's in the same round (ms)."""
    p50 = [
        (percentile(x["latencies"], 50), percentile(y["latencies"], 50))
        for x, y in zip(a, b, strict=True)
    ]
    return spread([x - y for x, y in p50])


async def _bench_billing(
    served: dict[str, Served], ledger: Ledger, workers: int, rounds: int, round_s: float
) -> dict[str, Any]:
    postmaster = await postmaster_of(ledger.pool)
    """GET billing against one server process, against `workers` processes, and the bare
    call, at each concurrency, in `rounds` interleaved rounds."""
    for load in LOADS:  # unmeasured: each process's pool, caches and prepared statements
        for c in CONCURRENCIES:
            await _slot(load, served, ledger, postmaster, c, min(1.0, round_s))
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {
        (load, c): [] for load in LOADS for c in CONCURRENCIES
    }
    for r in range(rounds):
        for c in CONCURRENCIES:
            for load in LOADS if r % 2 == 0 else LOADS[::-1]:
                runs[load, c].append(await _slot(load, served, ledger, postmaster, c, round_s))
    out: dict[str, Any] = {
        "workers": workers,
        "pool_size": POOL_SIZE,
        "rounds": rounds,
        "round_s": round_s,
    }
    for c in CONCURRENCIES:
        one, many, bare = runs["serve_1", c], runs["serve_n", c], runs["ledger", c]
        out[f"c{c}"] = {
            "serve_1": _figures(one),
            "serve_n": _figures(many),
            "ledger": _figures(bare),
            "serve_n_over_serve_1": _rate_over(many, one),
            "serve_n_over_ledger": _rate_over(many, bare),
            "serve_1_over_ledger": _rate_over(one, bare),
            "added_p50_ms": _added_p50(many, bare),
            "added_p50_ms_serve_1": _added_p50(one, bare),
        }
    return out


def _print_billing(b: dict[str, Any]) -> None:
    for c in CONCURRENCIES:
        p = b[f"c{c}"]
        for load, label in (
            ("serve_1", "serve"),
            ("serve_n", f"serve --workers {b['workers']}"),
            ("ledger", "Ledger.billing"),
        ):
            f = p[load]
            print(
                f"  billing c{c} {label}: {f['per_s']['median']:,.0f}/s "
                f"[{f['per_s']['min']:,.0f}-{f['per_s']['max']:,.0f}], "
                f"p50 {f['p50_ms']['median']:.2f} ms, p99 {f['p99_ms']['median']:.2f} ms; "
                f"CPU ms/request client {f['client_cpu_ms']['median']:.2f}, "
                f"server {f['server_cpu_ms']['median']:.2f}, "
                f"Postgres {f['postgres_cpu_ms']['median']:.2f}; "
                f"{f['cores']['median']:.2f} cores",
                flush=True,
            )
        print(
            f"  billing c{c}: --workers {b['workers']} over one process "
            f"{p['serve_n_over_serve_1']['median']:.2f}x "
            f"[{p['serve_n_over_serve_1']['min']:.2f}-{p['serve_n_over_serve_1']['max']:.2f}]",
            flush=True,
        )


async def run(
    dsn: str, redis_url: str, *, quick: bool, workers: int = WORKERS, rounds: int | None = None
) -> dict[str, Any]:
    now = datetime.now(UTC)
    pool = await create_pg_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    served: dict[str, Served] = {}
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
        served["serve_1"] = await _serve(dsn, redis_url)
        served["serve_n"] = await _serve(dsn, redis_url, workers)
        enqueued = await _bench_enqueue(served["serve_1"].port, redis, 3 if quick else 5)
        print(
            f"  enqueue 10,000 leads: HTTP {enqueued['enqueue_10k_ms']} ms "
            f"(client code {enqueued['enqueue_10k_client_ms']} ms; arq one by one "
            f"{enqueued['enqueue_10k_one_by_one_ms']} ms)",
            flush=True,
        )
        billing = await _bench_billing(
            served, ledger, workers, rounds or (5 if quick else 7), 1.0 if quick else 2.0
        )
        _print_billing(billing)
        return enqueued | {"billing": billing}
    finally:
        for server in served.values():
            await _stop(server)
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
    parser.add_argument(
        "--workers", type=int, default=WORKERS, help=f"processes of the second server ({WORKERS})"
    )
    parser.add_argument("--rounds", type=int, help="billing rounds (default: 5 quick, else 7)")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2: one process is measured anyway")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    quiet_logs()

    async def go() -> dict[str, Any]:
        async with fresh_servers() as servers:
            api = await run(
                servers.dsn,
                servers.redis_url(),
                quick=args.quick,
                workers=args.workers,
                rounds=args.rounds,
            )
            return api | {"billing_read": await billing_read(servers.dsn, quick=args.quick)}

    print(json.dumps(asyncio.run(go()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
