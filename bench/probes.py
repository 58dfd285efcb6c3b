"""Two probes behind figures in docs/benchmarks.md that no full run measures.

    python -m bench.probes wake     what the machine charges for a sleep and a round trip
    python -m bench.probes insert   what a 32-row insert into `charges` pays for

`wake`: the CPU (process time) charged per iteration of a 3 ms `time.sleep`, a
3 ms and a zero `asyncio.sleep` on asyncio's loop and on uvloop, and three
round trips through asyncpg (a fresh embedded Postgres) that differ only in
how long the server takes to answer: `SELECT 1`, a 2 ms `pg_sleep`, and 2-3
ms of server work. On a VM, going idle and being woken costs far more CPU
than the Python code around it, and every round trip a worker or client
waits for pays it: the longer the wait, the more it pays.

`insert`: the statement `tokens_apply` uses to insert a batch's charges, 32
rows at a time, into copies of `charges` with parts of its schema taken away
(the foreign key to billing_months, the CHECKs, indexes), with and without
`ON CONFLICT (team_id, idempotency_key) DO NOTHING`. Medians of 300
statements each, wall time at the client (one round trip included), each in
its own transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from bench.__main__ import AT, _setup_team
from bench.servers import fresh_servers, quiet_logs
from db.pool import create_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger

BATCH = 32
STATEMENTS = 300

# Round trips with the same client code whose answers come later and later: what
# the client is charged for waiting (going idle, being woken) grows with the wait.
ROUND_TRIPS = (
    ("SELECT 1 round trip (asyncpg), client side", "SELECT 1"),
    ("the same client code, answered after pg_sleep(0.002)", "SELECT pg_sleep(0.002)"),
    (
        "the same client code, answered after 2-3 ms of server work",
        "SELECT count(*) FROM generate_series(1, 20000)",
    ),
)

# The copy of `charges` each insert variant writes to: (name, DDL).
COPIES = (
    (
        "as it is (4 indexes, 8 CHECKs, foreign key)",
        "CREATE TABLE cx (LIKE charges INCLUDING ALL); ALTER TABLE cx ADD FOREIGN KEY "
        "(team_id, period_start) REFERENCES billing_months (team_id, period_start)",
    ),
    ("without the foreign key", "CREATE TABLE cx (LIKE charges INCLUDING ALL)"),
    (
        "without the foreign key and the CHECKs",
        "CREATE TABLE cx (LIKE charges INCLUDING INDEXES INCLUDING IDENTITY INCLUDING DEFAULTS)",
    ),
    (
        "without the foreign key and the partial held index",
        "CREATE TABLE cx (LIKE charges INCLUDING ALL); DROP INDEX cx_held_at_idx",
    ),
    (
        "primary key and (team, key) only",
        "CREATE TABLE cx (LIKE charges INCLUDING ALL); DROP INDEX cx_held_at_idx; "
        "DROP INDEX cx_team_id_period_start_id_idx",
    ),
)


def _cpu_us_per(loop_body: Callable[[], Any], n: int) -> float:
    cpu0 = time.process_time()
    for _ in range(n):
        loop_body()
    return (time.process_time() - cpu0) / n * 1e6


async def _async_cpu_us_per(body: Callable[[], Awaitable[Any]], n: int) -> float:
    cpu0 = time.process_time()
    for _ in range(n):
        await body()
    return (time.process_time() - cpu0) / n * 1e6


def wake(n: int = 300) -> dict[str, float]:
    out = {"time.sleep(0.003)": _cpu_us_per(lambda: time.sleep(0.003), n)}
    for loop_name, run in (("asyncio", asyncio.run), ("uvloop", uvloop.run)):
        for delay in (0.003, 0.0):
            out[f"asyncio.sleep({delay:g}) on {loop_name}"] = run(
                _async_cpu_us_per(lambda d=delay: asyncio.sleep(d), n)  # type: ignore[misc]
            )

    async def round_trips() -> dict[str, float]:
        async with fresh_servers("tokens-probe-") as servers:
            pool = await create_pool(servers.dsn, min_size=1, max_size=1)
            try:
                async with pool.acquire() as conn:
                    found = {}
                    for name, sql in ROUND_TRIPS:
                        for _ in range(50):
                            await conn.fetchval(sql)
                        found[name] = await _async_cpu_us_per(
                            lambda sql=sql: conn.fetchval(sql),  # type: ignore[misc]
                            n,
                        )
                    return found
            finally:
                await pool.close()

    quiet_logs()
    out |= asyncio.run(round_trips())
    return {k: round(v, 1) for k, v in out.items()}


async def _insert() -> list[tuple[str, float, float]]:
    quiet_logs()
    rows: list[tuple[str, float, float]] = []
    async with fresh_servers("tokens-probe-") as servers:
        pool = await create_pool(servers.dsn, min_size=1, max_size=1)
        try:
            ledger = Ledger(pool, DEFAULT_CATALOG)
            await ledger.sync_catalog()
            await _setup_team(ledger, "probe")
            month = await ledger.billing("probe", at=AT)
            keys = itertools.count()
            async with pool.acquire() as conn:
                for name, ddl in COPIES:
                    medians = []
                    for conflict in ("ON CONFLICT (team_id, idempotency_key) DO NOTHING", ""):
                        await conn.execute("DROP TABLE IF EXISTS cx")
                        await conn.execute(ddl)
                        insert = await conn.prepare(
                            "INSERT INTO cx (team_id, period_start, idempotency_key, action, "
                            "quantity, tokens, free_tokens, additional_tokens, state, job_id, "
                            "lead_id, held_at) SELECT 'probe', $1, k, 'debounce', 1, 1, 1, 0, "
                            f"'held', NULL, NULL, $2 FROM unnest($3::text[]) k {conflict} "
                            "RETURNING id, team_id, idempotency_key"
                        )
                        times = []
                        for i in range(STATEMENTS + 30):  # the first 30 unmeasured
                            batch = [f"p-{next(keys)}" for _ in range(BATCH)]
                            async with conn.transaction():
                                t0 = time.perf_counter()
                                await insert.fetch(month.period_start, AT, batch)
                                if i >= 30:
                                    times.append(time.perf_counter() - t0)
                        medians.append(statistics.median(times) * 1000)
                    rows.append((name, round(medians[0], 3), round(medians[1], 3)))
                await conn.execute("DROP TABLE IF EXISTS cx")
        finally:
            await pool.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probes", description=__doc__)
    parser.add_argument("probe", choices=["wake", "insert"])
    args = parser.parse_args(argv)
    if args.probe == "wake":
        print("| CPU charged per iteration | us |\n|---|---:|")
        for name, us in wake().items():
            print(f"| `{name}` | {us:.1f} |")
    else:
        print(
            f"| copy of `charges` ({BATCH} rows per statement) | with `ON CONFLICT DO NOTHING` "
            "| plain `INSERT` |\n|---|---:|---:|"
        )
        for name, with_conflict, plain in asyncio.run(_insert()):
            print(f"| {name} | {with_conflict:.3f} ms | {plain:.3f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
