"""Cost of usage alerts on the hot path: hold+capture with the alert trigger on and off.

    python -m bench.alerts [--quick] [--json FILE]    (alone; `python -m bench` runs it too)

Two fresh databases on the same server, migrated alike; in one the trigger
`billing_months_usage_alerts` is disabled. Each gets the teams of the
hold+capture benchmark. Then the same hold+capture load (group commit, c32)
runs on each, interleaved on/off, off/on, ... for ROUNDS rounds, so a busy
moment of a shared machine hits both alike; medians are reported.

Scenarios (c32 each):
- `hot_team`: one team, 500,000 free tokens and limit 10^11 (as hold+capture);
- `many_teams`: 1,000 such teams, round-robin;
- `hot_team_overage`: one team with no free tokens, spending additional tokens
  under limit 10^11: every batch's hold update runs the trigger function
  (reads the team's limit, checks the levels), its most expensive steady state.
slowdown_pct = (1 - median on/s / median off/s) x 100.

On a shared 2-core machine throughput swings far more than 5 % from one
second to the next, so two steadier figures come with it: the Postgres
server's CPU time per hold+capture (from /proc), and `trigger_cost`, the
trigger's own cost per month-row update measured in a server-side loop of
UPDATES updates (on against off, interleaved, medians). With group commit a
batch updates each month row twice (its holds, its settlements), whatever
the number of charges in it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.servers import postgres_cpu_s, postmaster_of
from db.migrate import migrate
from db.pool import create_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger

ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
AT = datetime(2025, 1, 15, 12, tzinfo=UTC)
TRIGGER = "billing_months_usage_alerts"
HOT, OVERAGE = "alerts-hot", "alerts-overage"
MANY = [f"alerts-team-{n:04d}" for n in range(1_000)]
SEATS = 1_000
HUGE_LIMIT = 10**11
CONCURRENCY = 32
UPDATES = 100
SCENARIOS = ("hot_team", "many_teams", "hot_team_overage")

Op = Callable[[asyncpg.Pool, int, int], Awaitable[None]]


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def _drive(pool: asyncpg.Pool, op: Op, concurrency: int, duration_s: float) -> dict[str, Any]:
    """`op` in `concurrency` callers for `duration_s`: operations per second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    done = 0

    async def caller(w: int) -> None:
        nonlocal done
        i = 0
        while loop.time() < deadline:
            await op(pool, w, i)
            i += 1
            done += 1

    start = loop.time()
    await asyncio.gather(*(caller(w) for w in range(concurrency)))
    return {"ops": done, "per_s": done / (loop.time() - start)}


async def _database(server_dsn: str, name: str, *, alerts: bool) -> str:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    dsn = _with_database(server_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        if not alerts:
            await conn.execute(f"ALTER TABLE billing_months DISABLE TRIGGER {TRIGGER}")
    finally:
        await conn.close()
    pool = await create_pool(dsn, min_size=2, max_size=16)
    try:
        ledger = Ledger(pool, DEFAULT_CATALOG)
        await ledger.sync_catalog()
        sem = asyncio.Semaphore(16)

        async def one(team: str, seats: int) -> None:
            async with sem:
                await ledger.set_team(
                    team,
                    plan="sales_engagement",
                    seats=seats,
                    interval="month",
                    anchor=ANCHOR,
                    at=AT,
                )
                await ledger.set_limit(team, HUGE_LIMIT, actor="bench", role="admin", at=AT)

        await asyncio.gather(one(HOT, SEATS), one(OVERAGE, 0), *(one(t, SEATS) for t in MANY))
    finally:
        await pool.close()
    return dsn


async def _point(
    ledger: Ledger, teams: list[str], tag: str, duration_s: float, postmaster: int
) -> tuple[float, float]:
    """(hold+captures per second, server CPU ms per hold+capture) of one timed run."""

    async def op(_pool: asyncpg.Pool, w: int, i: int) -> None:
        team = teams[(w * 7919 + i) % len(teams)]
        held = await ledger.hold(team, "debounce", 1, key=f"{tag}-{w}-{i}", at=AT)
        if held.refused or held.charge_id is None:
            raise RuntimeError(f"bench hold refused: {held}")
        await ledger.capture(held.charge_id, at=AT)

    cpu = postgres_cpu_s(postmaster)
    measured = await _drive(ledger.pool, op, CONCURRENCY, duration_s)
    cpu = postgres_cpu_s(postmaster) - cpu
    return float(measured["per_s"]), cpu * 1000 / max(measured["ops"], 1)


async def _update_us(conn: asyncpg.Connection, team: str, column: str, n: int) -> float:
    """Microseconds per `UPDATE billing_months SET column = column + 1` of one month row,
    n of them in one server-side loop (rolled back: nothing changes)."""
    sql = f"""DO $$ BEGIN FOR i IN 1..{n} LOOP
        UPDATE billing_months SET {column} = {column} + 1
         WHERE team_id = '{team}' AND period_start = '{ANCHOR.isoformat()}';
    END LOOP; END $$"""
    tx = conn.transaction()
    await tx.start()
    try:
        start = time.perf_counter()
        await conn.execute(sql)
        return (time.perf_counter() - start) * 1e6 / n
    finally:
        await tx.rollback()


async def _trigger_cost(dsns: dict[str, str], rounds: int) -> dict[str, Any]:
    """The trigger's own cost per month-row update, on against off, interleaved.

    `free_below_80`: a hold's update of a team far from its levels (the WHEN clause
    decides, no function call); `additional`: a hold's update in overage (the trigger
    function runs and reads the team's limit)."""
    conns = {m: await asyncpg.connect(dsns[m]) for m in dsns}
    out: dict[str, Any] = {"updates_per_sample": UPDATES, "samples": rounds}
    try:
        for case, team, column in (
            ("free_below_80", HOT, "free_held"),
            ("additional", OVERAGE, "additional_held"),
        ):
            us: dict[str, list[float]] = {"on": [], "off": []}
            for r in range(rounds):
                for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    us[mode].append(await _update_us(conns[mode], team, column, UPDATES))
            on, off = statistics.median(us["on"]), statistics.median(us["off"])
            out[case] = {
                "on_us_per_update": round(on, 2),
                "off_us_per_update": round(off, 2),
                "trigger_us_per_update": round(on - off, 2),
            }
    finally:
        for conn in conns.values():
            await conn.close()
    return out


async def run(server_dsn: str, *, quick: bool) -> dict[str, Any]:
    """Alerts on against off, interleaved; medians and slowdowns (JSON `alerts`)."""
    rounds, duration_s = (6, 2.0) if quick else (12, 2.5)
    dsns = {
        "on": await _database(server_dsn, "bench_alerts_on", alerts=True),
        "off": await _database(server_dsn, "bench_alerts_off", alerts=False),
    }
    teams = {"hot_team": [HOT], "many_teams": MANY, "hot_team_overage": [OVERAGE]}
    per_s: dict[str, dict[str, list[float]]] = {s: {"on": [], "off": []} for s in SCENARIOS}
    cpu_ms: dict[str, dict[str, list[float]]] = {s: {"on": [], "off": []} for s in SCENARIOS}
    pools = {
        m: await create_pool(dsns[m], min_size=CONCURRENCY, max_size=CONCURRENCY) for m in dsns
    }
    try:
        ledgers = {m: Ledger(pools[m], DEFAULT_CATALOG) for m in pools}
        postmaster = await postmaster_of(pools["on"])
        for r in range(rounds):
            for scenario in SCENARIOS:
                for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    rate, cpu = await _point(
                        ledgers[mode], teams[scenario], f"{scenario}-{r}", duration_s, postmaster
                    )
                    per_s[scenario][mode].append(round(rate, 1))
                    cpu_ms[scenario][mode].append(round(cpu, 4))
            last = (
                f"{s} on {per_s[s]['on'][-1]:.0f}/s off {per_s[s]['off'][-1]:.0f}/s"
                for s in SCENARIOS
            )
            print(f"  alerts round {r + 1}/{rounds}: " + ", ".join(last), flush=True)
        made = {m: int(await pools[m].fetchval("SELECT count(*) FROM alerts")) for m in pools}
        items_per_commit = {
            m: round(ledgers[m].group.items / max(ledgers[m].group.batches, 1), 1) for m in pools
        }
    finally:
        for pool in pools.values():
            await pool.close()
    out: dict[str, Any] = {
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "duration_s": duration_s,
        "alerts_made": made,
        "items_per_commit": items_per_commit,
        "trigger_cost": await _trigger_cost(dsns, 20 if quick else 40),
    }
    for scenario in SCENARIOS:
        on, off = (statistics.median(per_s[scenario][m]) for m in ("on", "off"))
        cpu_on, cpu_off = (statistics.median(cpu_ms[scenario][m]) for m in ("on", "off"))
        out[f"{scenario}_c{CONCURRENCY}_slowdown_pct"] = round((1 - on / off) * 100, 2)
        out[scenario] = {
            "on_median_per_s": round(on, 1),
            "off_median_per_s": round(off, 1),
            # Each round's on/off pair ran back to back: the median of their ratios.
            "paired_slowdown_pct": round(
                (
                    1
                    - statistics.median(
                        a / b for a, b in zip(*per_s[scenario].values(), strict=True)
                    )
                )
                * 100,
                2,
            ),
            "server_cpu_ms_per_op_on": round(cpu_on, 4),
            "server_cpu_ms_per_op_off": round(cpu_off, 4),
            "server_cpu_increase_pct": round((cpu_on / cpu_off - 1) * 100, 2),
            "on_per_s": per_s[scenario]["on"],
            "off_per_s": per_s[scenario]["off"],
        }
    admin = await asyncpg.connect(server_dsn)
    try:
        for dsn in dsns.values():
            name = urlsplit(dsn).path.lstrip("/")
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.servers import fresh_servers, quiet_logs

    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 s points")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    quiet_logs()

    async def go() -> dict[str, Any]:
        async with fresh_servers() as servers:
            return await run(servers.dsn, quick=args.quick)

    result = asyncio.run(go())
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"alerts": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
