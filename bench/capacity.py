"""How many workers for a load: metered jobs/s per worker process.

    python -m bench capacity [--quick] [--json FILE]

Each point enqueues metered lead jobs (debounce and enrich alternating, over 8
teams, sandbox providers with an added latency), then starts N worker
processes, each the project's `TokensWorker` from `worker_kwargs` in burst
mode with `max_jobs` slots (TOKENS_WORKER_CONCURRENCY), the cron jobs left
out. The processes import and connect first, then all start on one signal
(a Redis list), so start-up is not timed. jobs/s = jobs / (last finish - first
start), from arq's own job results. Every job is checked `captured` and the
ledger is checked to hold exactly the point's charges.

CPU: each worker reports its own CPU seconds from the signal to its exit; the
Postgres server's CPU (postmaster, its backends, and the backends that exited
meanwhile) is read from /proc around the point. Per job, the two say how
many worker cores one Postgres core can serve: `workers_per_pg_core` =
Postgres-bound jobs/s per core / worker-bound jobs/s per core. On this
2-core machine everything (workers, Postgres, Valkey, the bench) shares the
same cores, so the rate stops growing with N once the cores are busy; the
CPU ratio is what carries over to a machine with more cores.

Points: provider latency 0, 100 ms and 1 s, each with max_jobs 32 and 128,
one worker; then latency 0 with 1, 2 and 4 workers (max_jobs 32). Each point
is sized to last about `seconds` (a few seconds).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import asyncpg
from arq.connections import ArqRedis

from bench.jobs import (
    SPREAD_TEAMS,
    bench_clients,
    check_ledger,
    enqueue,
    forget_results,
    job_results,
    lead_jobs,
    month_totals,
)
from bench.servers import postgres_cpu_s, postmaster_of, quiet_logs, standalone_main
from worker.queue import QUEUE

GO_KEY = "bench:capacity:go"
LATENCIES_MS = (0, 100, 1000)
MAX_JOBS = (32, 128)
PROCESSES = (1, 2, 4)
# A rough ceiling of one worker process on a 2-core VM (CPU-bound at latency 0),
# only used to size a point.
CPU_BOUND_PER_S = 700
QUICK = {"seconds": 2.0, "max_jobs_count": 3_000}
FULL = {"seconds": 4.0, "max_jobs_count": 6_000}

# On uvloop's event loop, as `tokens worker` runs (cli/jobs.py).
WORKER_SCRIPT = """
import json, sys
from bench.capacity import worker_main
from cli.common import run
print(json.dumps(run(worker_main(*sys.argv[1:]), uvloop=True)), flush=True)
"""


async def worker_main(dsn: str, redis_url: str, latency_ms: str, max_jobs: str) -> dict[str, Any]:
    """One worker process: start up, say ready, wait for the signal, run the queue dry."""
    from runtime.config import Settings
    from worker.settings import TokensWorker, worker_kwargs

    quiet_logs()
    settings = Settings(
        database_url=dsn,
        redis_url=redis_url,
        ai_base_url=None,
        enrich_base_url=None,
        verify_base_url=None,
        sandbox_latency_ms=int(latency_ms),
        worker_concurrency=int(max_jobs),
        stripe_api_key=None,
        metrics_port=None,
    )
    kwargs = worker_kwargs(settings, redis_url, burst=True)
    kwargs["cron_jobs"] = []
    on_startup = kwargs["on_startup"]
    started: list[float] = []

    async def ready_then_wait(ctx: dict[str, Any]) -> None:
        # Connected to Postgres and Redis, catalog synced: the rest is the jobs.
        await on_startup(ctx)
        print("ready", flush=True)
        await ctx["redis"].blpop([GO_KEY], timeout=120)
        started.extend((time.process_time(), time.perf_counter()))

    kwargs["on_startup"] = ready_then_wait
    worker = TokensWorker(**kwargs)
    try:
        await worker.main()
    finally:
        await worker.close()
    return {
        "cpu_s": time.process_time() - started[0],
        "seconds": time.perf_counter() - started[1],
        "complete": worker.jobs_complete,
        "failed": worker.jobs_failed,
    }


def _jobs_for(latency_ms: int, max_jobs: int, processes: int, shape: dict[str, Any]) -> int:
    per_worker = (
        CPU_BOUND_PER_S if latency_ms == 0 else min(CPU_BOUND_PER_S, max_jobs * 1000 / latency_ms)
    )
    n = int(per_worker * processes * shape["seconds"])
    if latency_ms:
        n = max(n, max_jobs * processes * 2)  # at least two rounds of every slot
    return min(n, int(shape["max_jobs_count"]))


async def _start_worker(dsn: str, redis_url: str, latency_ms: int, max_jobs: int) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER_SCRIPT,
        dsn,
        redis_url,
        str(latency_ms),
        str(max_jobs),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if line.strip() != b"ready":
        raise RuntimeError(f"a bench worker did not start: {line!r}")
    return proc


async def _point(
    dsn: str,
    redis_url: str,
    redis: ArqRedis,
    pool: asyncpg.Pool,
    postmaster: int,
    teams: list[str],
    *,
    latency_ms: int,
    max_jobs: int,
    processes: int,
    shape: dict[str, Any],
) -> dict[str, Any]:
    n = _jobs_for(latency_ms, max_jobs, processes, shape)
    tag = f"cap-{uuid.uuid4().hex[:10]}"
    jobs = lead_jobs(tag, n, teams, True)
    if await redis.zcard(QUEUE):
        raise RuntimeError(f"queue {QUEUE} is not empty before the capacity point")
    await redis.delete(GO_KEY)
    before = await month_totals(pool, teams)
    await enqueue(redis, jobs)
    procs = await asyncio.gather(
        *(_start_worker(dsn, redis_url, latency_ms, max_jobs) for _ in range(processes))
    )
    pg0 = postgres_cpu_s(postmaster)
    # redis-py types rpush for its sync and async clients at once (Awaitable | int).
    await redis.rpush(GO_KEY, *(["go"] * processes))  # type: ignore[misc]
    reports = []
    for proc in procs:
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a bench worker failed ({proc.returncode})")
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    pg_cpu = postgres_cpu_s(postmaster) - pg0
    job_ids = [j[0] for j in jobs]
    results = await job_results(redis, job_ids)
    await forget_results(redis, job_ids)
    mismatches = [
        job_id
        for job_id, r in zip(job_ids, results, strict=True)
        if r is None or not r.success or r.result.get("status") != "captured"
    ]
    _, problems = await check_ledger(pool, tag, n, teams, before)
    done = [r for r in results if r is not None]
    span = max(r.finish_time for r in done) - min(r.start_time for r in done)
    per_s = n / span.total_seconds()
    worker_cpu = sum(r["cpu_s"] for r in reports)
    worker_ms = worker_cpu / n * 1000
    pg_ms = pg_cpu / n * 1000
    point = {
        "latency_ms": latency_ms,
        "max_jobs": max_jobs,
        "processes": processes,
        "jobs": n,
        "seconds": round(span.total_seconds(), 3),
        "per_s": round(per_s, 1),
        "per_s_per_process": round(per_s / processes, 1),
        "worker_cpu_ms_per_job": round(worker_ms, 3),
        "pg_cpu_ms_per_job": round(pg_ms, 3),
        # Worker processes' busy cores, and Postgres's, during the point.
        "worker_cores": round(worker_cpu / span.total_seconds(), 2),
        "pg_cores": round(pg_cpu / span.total_seconds(), 2),
        "workers_per_pg_core": round(pg_ms and worker_ms / pg_ms, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "mismatches": len(mismatches) + len(problems),
    }
    if mismatches or problems:
        point["mismatch_examples"] = (mismatches + problems)[:10]
    print(
        f"    latency {latency_ms:>4} ms  max_jobs {max_jobs:>3}  x{processes}  "
        f"{point['per_s']:>7.1f} jobs/s  worker {worker_ms:.2f} ms/job  pg {pg_ms:.2f} ms/job  "
        f"mismatches {point['mismatches']}",
        flush=True,
    )
    return point


async def run(dsn: str, redis_url: str, *, quick: bool) -> dict[str, Any]:
    """The per-process table and the scaling series, on running servers."""
    quiet_logs()
    shape = QUICK if quick else FULL
    teams = [f"cap-team-{n}" for n in range(SPREAD_TEAMS)]
    async with bench_clients(dsn, redis_url, teams) as (pool, redis):
        postmaster = await postmaster_of(pool)

        async def point(latency_ms: int, max_jobs: int, processes: int) -> dict[str, Any]:
            return await _point(
                dsn,
                redis_url,
                redis,
                pool,
                postmaster,
                teams,
                latency_ms=latency_ms,
                max_jobs=max_jobs,
                processes=processes,
                shape=shape,
            )

        per_process = [await point(lat, mj, 1) for lat in LATENCIES_MS for mj in MAX_JOBS]
        scaling = [await point(0, 32, n) for n in PROCESSES]
    ratios = [p["workers_per_pg_core"] for p in per_process + scaling if p["latency_ms"] == 0]
    return {
        "seconds_per_point": shape["seconds"],
        "per_process": per_process,
        "scaling": scaling,
        # Worker CPU per job over Postgres CPU per job, latency 0 points: how many
        # busy worker cores one Postgres core keeps up with.
        "workers_per_pg_core": round(statistics.median(ratios), 2) if ratios else None,
        "mismatches": sum(p["mismatches"] for p in per_process + scaling),
        "verified": all(p["mismatches"] == 0 for p in per_process + scaling),
    }


def main(argv: list[str] | None = None) -> int:
    return standalone_main(
        argv, prog="python -m bench capacity", doc=__doc__, quick_help="2 s points", run=run
    )


if __name__ == "__main__":
    raise SystemExit(main())
