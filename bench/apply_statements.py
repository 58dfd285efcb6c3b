"""Where Postgres spends a `tokens_apply` call: its statements' time, per call.

    python -m bench.apply_statements [--quick] [--json FILE]   (`python -m bench` runs it too)

The hold+capture load of `python -m bench` (group commit; one hot team, then
1,000 teams) at 1 caller (every call a lone item: the fixed cost of a call)
and at 32 (the batches of the c32 points), on a fresh embedded Postgres
restarted with `pg_stat_statements` (track = all, track_planning on): every
statement inside `tokens_apply` is counted, with its planning time.

For each point: the share of `tokens_apply`'s own time (its execution, as the
top-level statement) spent in each of its statements, and their execution and
planning ms per `tokens_apply` call. What is left ("the function itself") is
PL/pgSQL between statements (assignments, loops, the result's tuplestore) and
each statement's executor start-up and plan revalidation, which
pg_stat_statements leaves out of the statement's own time. Times are wall time
inside the server (a wait for a row lock counts), so at c32 on one hot team a
statement that waits for the month row looks costly.
The commit is not a statement here: its fsync is outside these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
from pathlib import Path
from typing import Any

import asyncpg

from bench.servers import fresh_servers, quiet_logs
from db.pool import create_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from runtime.embedded import ensure_postgres, stop_postgres

# Statements of tokens_apply (ledger/sql/holds.sql) by their text: step and what it does.
# (pg_stat_statements shows constants as $n and drops PL/pgSQL's INTO.)
STEPS: list[tuple[str, str]] = [
    (r"^SELECT coalesce\(array_agg\(l\.id\) FILTER", "1. lock the charges to settle"),
    (r"^SELECT (\$\d+|1|u\.i::integer) AS i, ch\.id, ch\.action", "2. look up the keys (EXECUTE)"),
    (
        r"^SELECT (d\.items|\$\d+::integer\[\] AS items|'\{1\}'::integer\[\] AS items), tp\.team",
        "2. read teams and months",
    ),
    (r"billing_months b WHERE b\.team_id = cur_team", "2. a hold outside its month"),
    (r"^SELECT (1|\$\d+) FROM (billing_months b|\(SELECT DISTINCT)", "3. lock the months"),
    (r"^(WITH done AS \()?\s*UPDATE charges ch", "4. settle the charges"),
    (r"^UPDATE billing_months b SET free_held = b\.free_held - c\.", "4. settle: month totals"),
    (r"^SELECT ('settle'|\$1, u\.i::integer, e\.code)", "5. answer the settlements"),
    (
        r"^SELECT (\* FROM billing_months b WHERE b\.team_id = h_team|d\.items, b\.free_granted)",
        "6. read month room",
    ),
    (r"^INSERT INTO charges", "6. insert the charges"),
    (r"^UPDATE billing_months b SET free_held = b\.free_held \+", "6. hold: month totals"),
    (r"FOR KEY SHARE OF", "6. foreign key checks (insert)"),
    (r"^SELECT ('hold'|\$1, u\.i::integer, h_code)", "7. answer the holds"),
]
APPLY = r"^SELECT \* FROM tokens_apply\("


def step_of(query: str) -> str:
    text = " ".join(query.split())
    for pattern, label in STEPS:
        if re.search(pattern, text):
            return label
    return "other: " + text[:60]


async def _with_statements(dsn: str, data_dir: Path) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
    finally:
        await conn.close()
    stop_postgres(data_dir)
    ensure_postgres(data_dir)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()


async def _point(
    dsn: str, teams: list[str], concurrency: int, seconds: float, tag: str
) -> dict[str, Any]:
    from bench.__main__ import AT, _drive_raw, _summary

    pool = await create_pool(dsn, min_size=concurrency, max_size=concurrency)
    stats = await asyncpg.connect(dsn)
    try:
        ledger = Ledger(pool, DEFAULT_CATALOG)
        keys = itertools.count()

        async def op(_pool: asyncpg.Pool, w: int, i: int) -> None:
            team = teams[(w * 7919 + i) % len(teams)]
            held = await ledger.hold(team, "debounce", 1, key=f"{tag}-{next(keys)}", at=AT)
            if held.charge_id is None or held.replayed:
                raise RuntimeError(f"bench hold {held.key} was not held anew")
            await ledger.capture(held.charge_id, at=AT)

        await _drive_raw(pool, op, concurrency, min(1.0, seconds / 3))  # plans, caches
        await stats.execute("SELECT pg_stat_statements_reset()")
        batches0 = ledger.group.batches
        run = _summary(await _drive_raw(pool, op, concurrency, seconds))
        rows = await stats.fetch(
            "SELECT query, toplevel, calls, total_exec_time, total_plan_time"
            " FROM pg_stat_statements"
        )
    finally:
        await stats.close()
        await pool.close()
    top = [r for r in rows if r["toplevel"] and re.search(APPLY, r["query"])]
    calls = sum(r["calls"] for r in top)
    own_ms = sum(r["total_exec_time"] for r in top)
    by_step: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["toplevel"]:
            continue
        s = by_step.setdefault(step_of(r["query"]), {"exec_ms": 0.0, "plan_ms": 0.0})
        s["exec_ms"] += r["total_exec_time"]
        s["plan_ms"] += r["total_plan_time"]
    inside = sum(s["exec_ms"] + s["plan_ms"] for s in by_step.values())
    steps = {
        label: {
            "exec_ms_per_call": round(s["exec_ms"] / calls, 4),
            "plan_ms_per_call": round(s["plan_ms"] / calls, 4),
            "share_pct": round(100 * (s["exec_ms"] + s["plan_ms"]) / own_ms, 1),
        }
        for label, s in sorted(by_step.items())
    }
    steps["the function itself"] = {
        "exec_ms_per_call": round((own_ms - inside) / calls, 4),
        "plan_ms_per_call": 0.0,
        "share_pct": round(100 * (own_ms - inside) / own_ms, 1),
    }
    return {
        "concurrency": concurrency,
        "ops_per_s": round(run["per_s"], 1),
        "apply_calls": calls,
        "items_per_call": round(2 * run["ops"] / max(calls, 1), 1),
        "batches": ledger.group.batches - batches0,
        "apply_ms_per_call": round(own_ms / calls, 4),
        "postgres_cpu_ms_per_op": round(run["postgres_cpu_ms"], 4),
        "steps": steps,
    }


async def run(*, quick: bool) -> dict[str, Any]:
    from bench.__main__ import HOT_TEAM, MANY_TEAMS, _setup_team

    seconds = 3.0 if quick else 5.0
    result: dict[str, Any] = {"seconds": seconds, "points": {}}
    async with fresh_servers("tokens-bench-statements-") as servers:
        await _with_statements(servers.dsn, servers.data_dir)
        pool = await create_pool(servers.dsn, min_size=2, max_size=16)
        try:
            setup = Ledger(pool, DEFAULT_CATALOG)
            await setup.sync_catalog()
            many = [f"bench-team-{n:04d}" for n in range(MANY_TEAMS)]
            for team in [HOT_TEAM, *many]:
                await _setup_team(setup, team)
        finally:
            await pool.close()
        for scenario, teams in (("hot_team", [HOT_TEAM]), ("many_teams", many)):
            for c in (1, 32):
                point = await _point(servers.dsn, teams, c, seconds, f"{scenario}-c{c}")
                result["points"][f"{scenario}_c{c}"] = point
                print(
                    f"  {scenario:<10} c{c:<3} {point['apply_ms_per_call']:.3f} ms per call "
                    f"({point['items_per_call']} items), "
                    f"pg cpu {point['postgres_cpu_ms_per_op']:.3f} ms/op",
                    flush=True,
                )
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per step, ms per call (exec + plan) and share, per point."""
    points = result["points"]
    names = list(points)
    labels = sorted({label for p in points.values() for label in p["steps"]})
    head = "| step | " + " | ".join(n.replace("_", " ") for n in names) + " |"
    rule = "|---|" + "---|" * len(names)
    lines = [head, rule]
    for label in labels:
        cells = []
        for n in names:
            s = points[n]["steps"].get(label)
            if s is None:
                cells.append("")
            else:
                ms = s["exec_ms_per_call"] + s["plan_ms_per_call"]
                cells.append(f"{ms:.3f} ms ({s['share_pct']:.0f} %)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| **tokens_apply, per call** | "
        + " | ".join(
            f"**{points[n]['apply_ms_per_call']:.3f} ms** ({points[n]['items_per_call']} items)"
            for n in names
        )
        + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apply_statements", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s points (default 5 s)")
    parser.add_argument("--json", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    quiet_logs()
    result = asyncio.run(run(quick=args.quick))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
