"""One measurement of bench/before_after.py, in a process of its own.

Run as a script (`python bench/before_after_point.py ...`), with PYTHONPATH
naming the tree whose `ledger` and `runtime` packages it imports: the working
tree, or an older commit extracted by bench/before_after.py. It uses only what
both have: `Ledger(pool, DEFAULT_CATALOG)`, `set_team`, `set_limit`, `hold`,
`capture`, `migrate` and `create_pool`.

    setup --dsn DSN --teams N            migrate, sync the catalog, make the teams
    run --dsn DSN --scenario hot|many --concurrency C --duration S --tag T
                                         hold+capture for S seconds; one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog

# The base commit's layout first: `db` may also be found outside PYTHONPATH (the
# project installed in the environment), and would then migrate the tree's schema.
try:
    from ledger.migrate import migrate  # type: ignore[import-not-found,import-untyped,no-redef,unused-ignore]
    from runtime.db import create_pool  # type: ignore[import-not-found,import-untyped,no-redef,unused-ignore]
except ImportError:  # the tree's layout, with the db/ layer
    from db.migrate import migrate
    from db.pool import create_pool

from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger

ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
AT = datetime(2025, 1, 15, 12, tzinfo=UTC)
HOT_TEAM = "bench-hot"
HUGE_LIMIT = 10**11
SEATS = 1_000


def _server_cpu(pids: list[int]) -> float:
    """CPU seconds the pool's Postgres backends have used (Linux /proc; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def many_teams(n: int) -> list[str]:
    return [f"bench-team-{i:04d}" for i in range(n)]


async def setup(dsn: str, teams: int) -> dict[str, object]:
    pool = await create_pool(dsn, min_size=2, max_size=16)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        ledger = Ledger(pool, DEFAULT_CATALOG)
        await ledger.sync_catalog()
        sem = asyncio.Semaphore(16)

        async def one(team: str) -> None:
            async with sem:
                await ledger.set_team(
                    team,
                    plan="sales_engagement",
                    seats=SEATS,
                    interval="month",
                    anchor=ANCHOR,
                    at=AT,
                )
                await ledger.set_limit(team, HUGE_LIMIT, actor="bench", role="admin", at=AT)

        await asyncio.gather(*(one(t) for t in [HOT_TEAM, *many_teams(teams)]))
    finally:
        await pool.close()
    return {"teams": teams + 1}


async def run(
    dsn: str, scenario: str, concurrency: int, duration_s: float, tag: str, teams: int
) -> dict[str, object]:
    names = [HOT_TEAM] if scenario == "hot" else many_teams(teams)
    pool = await create_pool(dsn, min_size=concurrency, max_size=concurrency)
    refused = 0
    latencies: list[float] = []
    try:
        ledger = Ledger(pool, DEFAULT_CATALOG)
        deadline = time.perf_counter() + duration_s

        async def worker(w: int) -> None:
            nonlocal refused
            i = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                team = names[(w * 7919 + i) % len(names)]
                held = await ledger.hold(team, "debounce", 1, key=f"{tag}-{w}-{i}", at=AT)
                if held.refused or held.charge_id is None:
                    refused += 1
                else:
                    await ledger.capture(held.charge_id, at=AT)
                latencies.append((time.perf_counter() - t0) * 1000)
                i += 1

        pids = [r[0] for r in await pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'tokens' AND backend_type = 'client backend'"
        )]  # fmt: skip
        server0 = _server_cpu(pids)
        start = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
        client_cpu = time.process_time() - cpu0
        server_cpu = _server_cpu(pids) - server0
        group = ledger.group
        per_commit = group.items / max(group.batches, 1)
    finally:
        await pool.close()
    latencies.sort()
    return {
        "ops": len(latencies),
        "per_s": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        if latencies
        else None,
        "items_per_commit": per_commit,
        "client_cpu_ms_per_op": client_cpu * 1000 / max(len(latencies), 1),
        "server_cpu_ms_per_op": server_cpu * 1000 / max(len(latencies), 1),
        "refused": refused,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "run"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--teams", type=int, default=1_000)
    parser.add_argument("--scenario", choices=["hot", "many"], default="hot")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--tag", default="t")
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    if args.command == "setup":
        out = asyncio.run(setup(args.dsn, args.teams))
    else:
        out = asyncio.run(
            run(args.dsn, args.scenario, args.concurrency, args.duration, args.tag, args.teams)
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
