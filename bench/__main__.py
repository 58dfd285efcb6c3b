"""Benchmarks: hold+capture throughput against a raw-UPDATE baseline, billing reads.

    python -m bench [--quick] [--json FILE] [--only hold_capture] [--concurrency 1,8,32,64]

Starts an embedded Postgres and Valkey in a fresh temporary data dir, migrates
the database, and measures on them:

1. hold+capture operations per second with C concurrent asyncio workers for a
   fixed duration, on one hot team and on 1,000 teams (round-robin), next to a
   baseline of one autocommit `UPDATE bench_counter SET n = n - 1 WHERE id = 1`
   per operation with the same pool size and concurrency; then, at c32, the
   same with the usage-alert trigger on against off, interleaved (bench/alerts.py);
2. the latency of `Ledger.billing` for a team with many charges;
3. arq throughput of metered jobs against no-op jobs (bench/arq_overhead.py),
   where the metered job's extra worker CPU goes (bench/arq_breakdown.py),
   then metered jobs/s per worker process at provider latencies 0, 100 ms and
   1 s, and with 1 to 4 worker processes (bench/capacity.py);
4. one reconcile run over many teams against the Stripe fake (bench/reconcile.py);
5. where Postgres spends a `tokens_apply` call, statement by statement
   (bench/apply_statements.py, on its own Postgres with pg_stat_statements);
6. the wall time of a whole `tokens billing --json` / `tokens charge --json`
   process against `python -c pass` (bench/cli_start.py);
7. the HTTP API: 10,000 leads enqueued in one request, and GET billing at 32
   concurrent clients against the bare `Ledger.billing` (bench/api.py).

The full run (no --quick) also writes docs/benchmarks.md and its plot.
`--only hold_capture` runs section 1's hold+capture points alone (no alerts,
no docs written), at the concurrencies of `--concurrency` (default: those of
the run); each point also reports the client's and Postgres's CPU per
operation, to tell which of them bounds it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import alerts as alerts_bench
from bench import api as api_bench
from bench import apply_statements, arq_breakdown, arq_overhead, capacity, cli_start, report
from bench import reconcile as reconcile_bench
from bench.servers import fresh_servers, postgres_cpu_s, postmaster_of, quiet_logs, wake_cost_us
from db.pool import create_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger

ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
AT = datetime(2025, 1, 15, 12, tzinfo=UTC)
HOT_TEAM = "bench-hot"
BILLING_TEAM = "bench-billing"
MANY_TEAMS = 1_000
HUGE_LIMIT = 10**11
SEATS = 1_000
BILLING_CALLS = 500
LEDGER_CHARGES = 300

Op = Callable[[asyncpg.Pool, int, int], Awaitable[None]]


def _percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    index = min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[index]


async def _drive_raw(
    pool: asyncpg.Pool, op: Op, concurrency: int, duration_s: float
) -> dict[str, Any]:
    """Run `op` in `concurrency` workers for `duration_s`: its latencies (ms), the
    elapsed time, and the CPU seconds of this process and of the Postgres server."""
    latencies: list[float] = []
    postmaster = await postmaster_of(pool)
    cpu0, pg0 = time.process_time(), postgres_cpu_s(postmaster)
    deadline = time.perf_counter() + duration_s

    async def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await op(pool, w, i)
            latencies.append((time.perf_counter() - t0) * 1000)
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {
        "latencies": latencies,
        "elapsed": time.perf_counter() - start,
        "cpu": time.process_time() - cpu0,
        "pg": postgres_cpu_s(postmaster) - pg0,
    }


def _summary(*runs: dict[str, Any]) -> dict[str, Any]:
    """ops/s, latencies in ms, and the CPU per operation (in ms) of this process and
    of the Postgres server, over one or more runs of the same operation."""
    latencies = sorted(x for r in runs for x in r["latencies"])
    n = max(len(latencies), 1)
    return {
        "client_cpu_ms": 1000 * sum(r["cpu"] for r in runs) / n,
        "postgres_cpu_ms": 1000 * sum(r["pg"] for r in runs) / n,
        "ops": len(latencies),
        "per_s": len(latencies) / sum(r["elapsed"] for r in runs),
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
    }


async def _drive(pool: asyncpg.Pool, op: Op, concurrency: int, duration_s: float) -> dict[str, Any]:
    """`_summary` of one run of `op` (see `_drive_raw`)."""
    return _summary(await _drive_raw(pool, op, concurrency, duration_s))


async def _drive_pair(
    pool: asyncpg.Pool, op_a: Op, op_b: Op, concurrency: int, duration_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`op_a` and `op_b` for `duration_s` each, in the order A B B A (two halves each),
    so that neither gains from going first or from a drift during the run. Both are
    warmed up first, unmeasured: on a fresh pool the first calls of each connection
    compile the money functions and plan their statements, a cost A alone would pay."""
    warmup = min(0.5, duration_s / 10)
    await _drive_raw(pool, op_a, concurrency, warmup)
    await _drive_raw(pool, op_b, concurrency, warmup)
    half = duration_s / 2
    a1 = await _drive_raw(pool, op_a, concurrency, half)
    b1 = await _drive_raw(pool, op_b, concurrency, half)
    b2 = await _drive_raw(pool, op_b, concurrency, half)
    a2 = await _drive_raw(pool, op_a, concurrency, half)
    return _summary(a1, a2), _summary(b1, b2)


async def _setup_team(ledger: Ledger, team: str) -> None:
    await ledger.set_team(
        team, plan="sales_engagement", seats=SEATS, interval="month", anchor=ANCHOR, at=AT
    )
    await ledger.set_limit(team, HUGE_LIMIT, actor="bench", role="admin", at=AT)
    # Its billing month opened now (the first hold of a month opens it): otherwise the
    # mode measured first over 1,000 teams would pay for opening them all.
    await ledger.billing(team, at=AT)


async def _bench_hold_capture(
    dsn: str, ledger_setup: Ledger, concurrencies: list[int], duration_s: float
) -> dict[str, Any]:
    await _setup_team(ledger_setup, HOT_TEAM)
    many = [f"bench-team-{n:04d}" for n in range(MANY_TEAMS)]
    sem = asyncio.Semaphore(16)

    async def setup_one(team: str) -> None:
        async with sem:
            await _setup_team(ledger_setup, team)

    await asyncio.gather(*(setup_one(t) for t in many))

    refused = 0
    run_id = 0

    def ledger_op(teams: list[str], ledger: Ledger, tag: str) -> Op:
        # A new key for every call, however many runs drive this op (_drive_pair
        # runs it twice, and each run counts i from 0): a key used before would
        # replay its charge, not hold and capture.
        keys = itertools.count()

        async def op(pool: asyncpg.Pool, w: int, i: int) -> None:
            nonlocal refused
            team = teams[(w * 7919 + i) % len(teams)]
            held = await ledger.hold(team, "debounce", 1, key=f"{tag}-{next(keys)}", at=AT)
            if held.replayed:
                raise RuntimeError(f"bench key {held.key} replayed: the op reused a key")
            if held.refused or held.charge_id is None:
                refused += 1
                return
            await ledger.capture(held.charge_id, at=AT)

        return op

    async def baseline_op(pool: asyncpg.Pool, w: int, i: int) -> None:
        await pool.execute("UPDATE bench_counter SET n = n - 1 WHERE id = 1")

    results: dict[str, Any] = {"hot_team": {}, "many_teams": {}}
    for scenario, teams in (("hot_team", [HOT_TEAM]), ("many_teams", many)):
        for c in concurrencies:
            pool = await create_pool(dsn, min_size=c, max_size=c)
            try:
                grouped = Ledger(pool, DEFAULT_CATALOG)
                alone = Ledger(pool, DEFAULT_CATALOG, group_commit=False)
                run_id += 1
                # Group commit and one commit per call, A B B A: neither goes first.
                measured, single = await _drive_pair(
                    pool,
                    ledger_op(teams, grouped, f"g{run_id}"),
                    ledger_op(teams, alone, f"s{run_id}"),
                    c,
                    duration_s,
                )
                baseline = await _drive(pool, baseline_op, c, duration_s)
            finally:
                await pool.close()
            point = {
                "per_s": round(measured["per_s"], 1),
                "baseline_per_s": round(baseline["per_s"], 1),
                "ratio": round(measured["per_s"] / baseline["per_s"], 3),
                "p50_ms": round(measured["p50_ms"], 3),
                "p99_ms": round(measured["p99_ms"], 3),
                "baseline_p50_ms": round(baseline["p50_ms"], 3),
                "baseline_p99_ms": round(baseline["p99_ms"], 3),
                # The same operations with group commit off: one transaction per call.
                "single_per_s": round(single["per_s"], 1),
                "single_ratio": round(single["per_s"] / baseline["per_s"], 3),
                "single_p99_ms": round(single["p99_ms"], 3),
                "items_per_commit": round(grouped.group.items / max(grouped.group.batches, 1), 1),
                # CPU per operation (ms): this process's, and the Postgres server's.
                "client_cpu_ms": round(measured["client_cpu_ms"], 3),
                "postgres_cpu_ms": round(measured["postgres_cpu_ms"], 3),
                "single_client_cpu_ms": round(single["client_cpu_ms"], 3),
                "single_postgres_cpu_ms": round(single["postgres_cpu_ms"], 3),
                "ops": measured["ops"],
                "pool_size": c,
                "duration_s": duration_s,
            }
            results[scenario][f"c{c}"] = point
            print(
                f"  {scenario:<10} c{c:<3} {point['per_s']:>8.1f}/s  "
                f"(one commit each {point['single_per_s']:>7.1f}/s)  "
                f"baseline {point['baseline_per_s']:>8.1f}/s  ratio {point['ratio']:.2f}  "
                f"p50 {point['p50_ms']:.2f} ms  p99 {point['p99_ms']:.2f} ms  "
                f"{point['items_per_commit']} per commit  "
                f"cpu ms/op client {point['client_cpu_ms']:.3f} pg {point['postgres_cpu_ms']:.3f}",
                flush=True,
            )
    results["refused"] = refused
    return results


async def _bench_billing(pool: asyncpg.Pool, ledger: Ledger, charges: int) -> dict[str, Any]:
    await _setup_team(ledger, BILLING_TEAM)
    for n in range(LEDGER_CHARGES):
        await ledger.charge(BILLING_TEAM, "debounce", 1, key=f"ledger-{n}", at=AT)
    period_start = await pool.fetchval(
        "SELECT period_start FROM charges WHERE team_id = $1 LIMIT 1", BILLING_TEAM
    )
    bulk = max(charges - LEDGER_CHARGES, 0)
    t0 = time.perf_counter()
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
        AT,
        bulk,
        timeout=600,
    )
    await pool.execute("ANALYZE charges")
    insert_s = time.perf_counter() - t0
    total = await pool.fetchval("SELECT count(*) FROM charges WHERE team_id = $1", BILLING_TEAM)
    drift = await ledger.drift()

    latencies: list[float] = []
    for _ in range(BILLING_CALLS):
        t = time.perf_counter()
        await ledger.billing(BILLING_TEAM, at=AT)
        latencies.append((time.perf_counter() - t) * 1000)
    latencies.sort()
    return {
        "charges": int(total),
        "calls": BILLING_CALLS,
        "p50_ms": round(_percentile(latencies, 50), 3),
        "p99_ms": round(_percentile(latencies, 99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "bulk_insert_s": round(insert_s, 2),
        "drift_rows": len(drift),
    }


async def _hold_capture_only(concurrencies: list[int], duration_s: float) -> dict[str, Any]:
    """Section 1's hold+capture points alone, on fresh servers."""
    async with fresh_servers() as servers:
        conn = await asyncpg.connect(servers.dsn)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bench_counter (id int PRIMARY KEY, n bigint NOT NULL)"
            )
            await conn.execute("INSERT INTO bench_counter VALUES (1, 0)")
            postgres = await conn.fetchval("SELECT version()")
        finally:
            await conn.close()
        pool = await create_pool(servers.dsn, min_size=2, max_size=16)
        try:
            ledger = Ledger(pool, DEFAULT_CATALOG)
            await ledger.sync_catalog()
            print("hold+capture:", flush=True)
            hold_capture = await _bench_hold_capture(servers.dsn, ledger, concurrencies, duration_s)
        finally:
            await pool.close()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "duration_s": duration_s,
        "machine": {"nproc": os.cpu_count(), "postgres": postgres},
        "hold_capture": hold_capture,
    }


async def _run(
    quick: bool, before: str | None = None, concurrencies: list[int] | None = None
) -> dict[str, Any]:
    concurrencies = concurrencies or ([32] if quick else [1, 8, 32, 64])
    duration_s = 3.0 if quick else 5.0
    charges = 100_000 if quick else 1_000_000
    wake_us = wake_cost_us()  # before any server runs
    async with fresh_servers() as servers:
        dsn = servers.dsn
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS bench_counter (id int PRIMARY KEY, n bigint NOT NULL)"
            )
            await conn.execute(
                "INSERT INTO bench_counter VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0"
            )
            postgres = await conn.fetchval("SELECT version()")
        finally:
            await conn.close()

        pool = await create_pool(dsn, min_size=2, max_size=16)
        try:
            ledger = Ledger(pool, DEFAULT_CATALOG)
            await ledger.sync_catalog()
            print("hold+capture:", flush=True)
            hold_capture = await _bench_hold_capture(dsn, ledger, concurrencies, duration_s)
            print("usage alerts on against off (hold+capture, c32):", flush=True)
            alerts = await alerts_bench.run(dsn, quick=quick)
            print("billing read:", flush=True)
            billing = await _bench_billing(pool, ledger, charges)
        finally:
            await pool.close()
        print("arq, metered jobs against no-op jobs:", flush=True)
        arq = await arq_overhead.run(dsn, servers.redis_url(), quick=quick, before=before)
        print("arq, where a metered job's extra worker CPU goes:", flush=True)
        breakdown = await arq_breakdown.run(dsn, servers.redis_url(), quick=quick)
        print("capacity, metered jobs/s per worker process:", flush=True)
        capacity_result = await capacity.run(dsn, servers.redis_url(), quick=quick)
        print("reconcile:", flush=True)
        reconciled = await reconcile_bench.run(dsn, quick=quick)
        print("HTTP API:", flush=True)
        api = await api_bench.run(dsn, servers.redis_url(), quick=quick)
    print("where Postgres spends a tokens_apply call:", flush=True)
    statements = await apply_statements.run(quick=quick)
    print("command start-up:", flush=True)
    cli = await asyncio.to_thread(cli_start.run, quick=quick)

    return {
        "quick": quick,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "duration_s": duration_s,
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgres": postgres,
            "wake_cost_us": wake_us,
        },
        "hold_capture": hold_capture,
        "apply_statements": statements,
        "alerts": alerts,
        "arq_overhead": arq,
        "arq_breakdown": breakdown,
        "capacity": capacity_result,
        "reconcile": reconciled,
        "billing_read": billing,
        "cli": cli,
        "api": api,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="concurrency 32 only, 3 s points")
    parser.add_argument("--json", type=Path, help="write the results as one JSON object here")
    parser.add_argument(
        "--docs", type=Path, default=Path("docs/benchmarks.md"), help="full run writes this"
    )
    parser.add_argument(
        "--before",
        help="a commit: also run its own arq benchmark on the same servers (arq_overhead.before)",
    )
    parser.add_argument(
        "--only", choices=["hold_capture"], help="run this section alone (writes no docs)"
    )
    parser.add_argument(
        "--concurrency",
        type=lambda v: [int(c) for c in v.split(",")],
        help="hold+capture concurrencies, comma-separated (default: 32 quick, else 1,8,32,64)",
    )
    args = parser.parse_args(argv)
    quiet_logs()
    if args.only == "hold_capture":
        concurrencies = args.concurrency or ([32] if args.quick else [1, 8, 32, 64])
        only = asyncio.run(_hold_capture_only(concurrencies, 3.0 if args.quick else 5.0))
        if args.json:
            args.json.write_text(json.dumps(only, indent=2, default=str) + "\n")
        return 0
    result = asyncio.run(_run(args.quick, args.before, args.concurrency))
    print()
    print(report.summary(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if not args.quick:
        report.write_docs(result, args.docs)
        print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
