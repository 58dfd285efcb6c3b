"""Where a metered job's extra worker CPU goes (issue 15, part 2).

    python -m bench.arq_breakdown [--quick] [--json FILE]

The same runs as bench/arq_overhead.py (8 teams, `TokensWorker` in burst
mode, CPU of this process from the end of `on_startup` to the last job), in
four variants, alternated round by round so that the machine's drift falls
on all of them:

- `noop`: the baseline job (same arguments, returns a small dict);
- `metered`: the real jobs, Postgres and all (the headline of arq_overhead);
- `metered, Postgres answered in-process`: the same, except that each
  `tokens_apply` call is answered at once with rows recorded from real calls
  (`tokens_apply` through `ledger.group_commit.apply` as usual: the batch's
  argument arrays are built and its rows read as always; only the round trip
  is skipped). What is left over `noop` is the worker's own metering code;
  what `metered` adds over this is the Postgres round trips (asyncpg's
  encoding and decoding, the pool, the socket) and Postgres's work on the
  same two cores;
- `metered, production logs`: the real jobs with `TOKENS_LOG_LEVEL=INFO` and
  JSON lines, as `tokens worker` runs by default (written to /dev/null): the
  benchmarks otherwise silence the ledger's hold and capture lines.

A patched module in a benchmark, not in the product: the recorded answers
are only ever used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
from arq.connections import ArqRedis

from bench.arq_overhead import SPREAD_TEAMS, _one_run, bench_clients, bench_settings
from bench.servers import quiet_logs, standalone_main
from ledger import group_commit
from runtime.logs import configure_logging

VARIANTS = ("noop", "metered", "metered_postgres_in_process", "metered_production_logs")
QUICK = {"jobs": 1_500, "rounds": 1}
FULL = {"jobs": 3_000, "rounds": 4}
RECORDED = 64  # rows of each kind: more than a batch ever carries here (16)


async def _recorded_rows(pool: asyncpg.Pool, team: str) -> dict[str, list[Any]]:
    """Real tokens_apply rows, hold and settle, by position: answers to replay."""
    rows: dict[str, list[Any]] = {"hold": [], "settle": []}

    class Recording:
        async def fetch(self, query: str, *args: Any) -> list[Any]:
            out = await pool.fetch(query, *args)
            for row in out:
                rows[row["kind"]].append(row)
            return out

    at = datetime(2025, 1, 2, tzinfo=UTC)
    holds = [
        group_commit.HoldItem(team, f"recorded-{n}", "enrich", 1, 10, at, None, None)
        for n in range(RECORDED)
    ]
    held = await group_commit.apply(Recording(), holds)
    settles = [group_commit.SettleItem(h["charge_id"], "captured", at) for h in held]  # type: ignore[index]
    await group_commit.apply(Recording(), settles)
    return rows


@contextlib.contextmanager
def _postgres_in_process(rows: dict[str, list[Any]]) -> Iterator[None]:
    real_apply = group_commit.apply

    class Answering:
        async def fetch(self, query: str, *args: Any) -> list[Any]:
            await asyncio.sleep(0)  # an answer comes on a later loop turn, as from a socket
            return rows["settle"][: len(args[0])] + rows["hold"][: len(args[3])]

    answering = Answering()

    async def apply(conn: Any, items: Any) -> Any:
        return await real_apply(answering, items)

    group_commit.apply = apply
    try:
        yield
    finally:
        group_commit.apply = real_apply


@contextlib.contextmanager
def _production_logs() -> Iterator[None]:
    stderr = sys.stderr
    with open(os.devnull, "w") as devnull:
        sys.stderr = devnull
        configure_logging("json", "INFO")
        try:
            yield
        finally:
            sys.stderr = stderr
            quiet_logs()


async def _variant(
    name: str,
    settings: Any,
    redis: ArqRedis,
    pool: asyncpg.Pool,
    teams: list[str],
    n: int,
    rows: dict[str, list[Any]],
) -> dict[str, Any]:
    kind = "noop" if name == "noop" else "metered"
    in_process = name == "metered_postgres_in_process"
    with contextlib.ExitStack() as stack:
        if in_process:
            stack.enter_context(_postgres_in_process(rows))
        if name == "metered_production_logs":
            stack.enter_context(_production_logs())
        return await _one_run(
            settings, redis, pool, kind=kind, n=n, teams=teams, check_ledger=not in_process
        )


async def run(dsn: str, redis_url: str, *, quick: bool) -> dict[str, Any]:
    quiet_logs()
    shape = QUICK if quick else FULL
    settings = bench_settings(dsn, redis_url)
    teams = [f"arqd-team-{n}" for n in range(SPREAD_TEAMS)]
    async with bench_clients(dsn, redis_url, [*teams, "arqd-recorded"]) as (pool, redis):
        rows = await _recorded_rows(pool, "arqd-recorded")
        for kind in ("noop", "metered"):  # first-use costs, not measured
            await _one_run(settings, redis, pool, kind=kind, n=300, teams=teams)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for r in range(shape["rounds"]):
            for name in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                point = await _variant(name, settings, redis, pool, teams, shape["jobs"], rows)
                runs[name].append(point)
                print(
                    f"    {name:<30} cpu {point['cpu_ms_per_job']:.3f} ms/job"
                    f"  {point['sleeps_per_job']:.2f} sleeps/job"
                    f"  {point['per_s']:>7.1f} jobs/s  mismatches {point['mismatches']}",
                    flush=True,
                )
    cpu = {v: statistics.median(p["cpu_ms_per_job"] for p in runs[v]) for v in VARIANTS}
    user = {v: statistics.median(p["user_cpu_ms_per_job"] for p in runs[v]) for v in VARIANTS}
    mismatches = sum(p["mismatches"] for ps in runs.values() for p in ps)
    return {
        "jobs": shape["jobs"],
        "rounds": shape["rounds"],
        "cpu_ms_per_job": {v: round(c, 4) for v, c in cpu.items()},
        "sleeps_per_job": {
            v: round(statistics.median(p["sleeps_per_job"] for p in runs[v]), 3) for v in VARIANTS
        },
        # Each variant's worker CPU per job over the no-op job's, minus 1.
        "cpu_overhead_pct": {
            v: round((cpu[v] / cpu["noop"] - 1) * 100, 2) for v in VARIANTS if v != "noop"
        },
        # The same in user-mode CPU only (the code's work, not the kernel's wake-ups).
        "user_cpu_ms_per_job": {v: round(u, 4) for v, u in user.items()},
        "user_cpu_overhead_pct": {
            v: round((user[v] / user["noop"] - 1) * 100, 2) for v in VARIANTS if v != "noop"
        },
        "mismatches": mismatches,
        "verified": mismatches == 0,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    return standalone_main(
        argv,
        prog="python -m bench.arq_breakdown",
        doc=__doc__,
        quick_help="one round of 1,500-job runs",
        run=run,
    )


if __name__ == "__main__":
    raise SystemExit(main())
