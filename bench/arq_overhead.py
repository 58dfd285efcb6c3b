"""The worker's metering overhead: metered jobs against no-op jobs, same worker.

    python -m bench arq [--quick] [--json FILE]

Both sides run the production worker class, `worker.settings.TokensWorker`
(what `tokens worker` runs), in-process and in burst mode, built from
`worker.settings.worker_kwargs` (same max_jobs, job timeout, tries, poll
delay, `on_startup` with its Postgres pool); only the functions differ:

- metered: the project's `debounce` and `enrich` jobs (alternating) with the
  offline sandbox providers and no added latency: payload validation,
  `Ledger.hold`, the sandbox search, `Ledger.capture`, metrics, the result;
- no-op: one function that takes the same arguments and returns a small dict.

The cron jobs (reconcile, hold-expiry sweep) are left out of both: a run that
crossed a 5-minute mark would time a reconcile. N jobs are enqueued before the
worker starts; a run is timed from the end of `on_startup` to the queue being
empty.

The figure judged is the worker's user-mode CPU per metered job over a no-op
job's, minus 1, for each pair of runs back to back (the order alternating),
reported as the median over pairs with its min and max. User-mode, because on
a VM the kernel's share is mostly what the hypervisor charges for going idle
and being woken, which moves with the machine, not with the code; total CPU
(user and kernel) and throughput are reported beside it. Throughput also pays
for the Postgres CPU spent on the same cores.

Scenarios: `teams` spreads the metered jobs round-robin over 8 teams;
`hot_team` puts them all on one team (one billing-month row takes every hold
and capture).

Every metered run is checked: each job's stored arq result is `captured`; the
ledger holds exactly N charges with the run's keys, all captured; the teams'
running totals grew by exactly their tokens. At the end the teams' months are
checked against their charges. Anything else is counted in `mismatches` and
makes `verified` false.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import asyncpg
from arq.connections import ArqRedis
from arq.worker import Worker, func

from bench.jobs import (
    ACTIONS,
    NOOP,
    SPREAD_TEAMS,
    bench_clients,
    bench_settings,
    check_ledger,
    enqueue,
    forget_results,
    job_results,
    lead_jobs,
    month_totals,
    teams_drift,
)
from bench.servers import quiet_logs, sleeps_so_far, spread, standalone_main, user_cpu_s
from runtime.config import Settings
from worker.queue import QUEUE
from worker.settings import TokensWorker, worker_kwargs

REPORTED_MISMATCHES = 10

QUICK = {"jobs": 1_000, "pairs": 5, "warmup_jobs": 200}
FULL = {"jobs": 3_000, "pairs": 7, "warmup_jobs": 500}


async def noop(ctx: dict[str, Any], team: str, lead: dict[str, Any]) -> dict[str, Any]:
    """The baseline job: same arguments as a metered lead job, nothing done."""
    return {"status": "ok", "job_id": ctx["job_id"]}


class WorkerRun(NamedTuple):
    """One burst worker run: everything but `startup_s` from the end of startup to
    the last job."""

    worker: Worker
    startup_s: float
    jobs_s: float
    cpu_s: float  # this process's CPU, user and kernel
    user_s: float  # its user-mode part
    sleeps: int  # voluntary context switches: how often it went idle and was woken


async def _worker_run(settings: Settings, redis_url: str, functions: list[Any] | None) -> WorkerRun:
    """Run one burst worker to the end."""
    kwargs = worker_kwargs(settings, redis_url, burst=True)
    if functions is not None:
        kwargs["functions"] = functions
    # Left out on both sides: a run that crossed a 5-minute mark would time a reconcile.
    kwargs["cron_jobs"] = []
    started: list[float] = []
    on_startup: Callable[[dict[str, Any]], Awaitable[None]] = kwargs["on_startup"]

    async def timed_startup(ctx: dict[str, Any]) -> None:
        await on_startup(ctx)
        started.extend((time.perf_counter(), time.process_time(), user_cpu_s(), sleeps_so_far()))

    kwargs["on_startup"] = timed_startup
    worker = TokensWorker(**kwargs)
    t0 = time.perf_counter()
    try:
        await worker.main()
        t1, cpu1, user1 = time.perf_counter(), time.process_time(), user_cpu_s()
        sleeps1 = sleeps_so_far()
    finally:
        await worker.close()
    return WorkerRun(
        worker,
        startup_s=started[0] - t0,
        jobs_s=t1 - started[0],
        cpu_s=cpu1 - started[1],
        user_s=user1 - started[2],
        sleeps=sleeps1 - int(started[3]),
    )


def _group_commit_stats(worker: Worker) -> dict[str, Any] | None:
    """How the worker's Ledger batched its holds and settlements (None without group commit)."""
    group = getattr(worker.ctx["deps"]["ledger"], "group", None)
    batches, items = getattr(group, "batches", None), getattr(group, "items", None)
    if not isinstance(batches, int) or not isinstance(items, int) or not batches:
        return None
    return {"batches": batches, "items": items, "mean_batch": round(items / batches, 2)}


async def _one_run(
    settings: Settings,
    redis: ArqRedis,
    pool: asyncpg.Pool,
    *,
    kind: str,
    n: int,
    teams: list[str],
) -> dict[str, Any]:
    """One burst worker over n queued jobs, its results and the ledger checked."""
    metered = kind == "metered"
    tag = f"arqb-{uuid.uuid4().hex[:10]}"
    jobs = lead_jobs(tag, n, teams, metered)
    if await redis.zcard(QUEUE):
        raise RuntimeError(f"queue {QUEUE} is not empty before the benchmark run")
    before = await month_totals(pool, teams)
    await enqueue(redis, jobs)
    functions = None if metered else [func(noop, name=NOOP)]
    assert settings.redis_url is not None
    run = await _worker_run(settings, settings.redis_url, functions)
    worker = run.worker
    job_ids = [j[0] for j in jobs]
    results = await job_results(redis, job_ids)
    await forget_results(redis, job_ids)
    out: dict[str, Any] = {
        "per_s": round(n / run.jobs_s, 1),
        "seconds": round(run.jobs_s, 4),
        "cpu_ms_per_job": round(run.cpu_s / n * 1000, 4),
        "user_cpu_ms_per_job": round(run.user_s / n * 1000, 4),
        # How often the worker went idle and was woken, per job: on a VM each wake
        # costs tens of us of CPU (bench.servers.wake_cost_us), whatever the code.
        "sleeps_per_job": round(run.sleeps / n, 3),
        "startup_s": round(run.startup_s, 4),
        "complete": worker.jobs_complete,
        "failed": worker.jobs_failed,
        "retried": worker.jobs_retried,
    }
    if metered:
        out["group_commit"] = _group_commit_stats(worker)
    expected = "captured" if metered else "ok"
    mismatches: list[str] = []
    for job_id, r in zip(job_ids, results, strict=True):
        status = r.result.get("status") if r is not None and r.success else None
        if status != expected:
            mismatches.append(f"{job_id}: {'no result' if r is None else r.result!r}")
    if metered:
        facts, problems = await check_ledger(pool, tag, n, teams, before)
        out |= facts
        mismatches += problems
    out["mismatches"] = len(mismatches)
    if mismatches:
        out["mismatch_examples"] = mismatches[:REPORTED_MISMATCHES]
    return out


def _pct_over(metered: float, noop: float) -> float:
    return (metered / noop - 1) * 100


async def _scenario(
    settings: Settings,
    redis: ArqRedis,
    pool: asyncpg.Pool,
    teams: list[str],
    *,
    jobs: int,
    pairs: int,
) -> dict[str, Any]:
    """`pairs` pairs of runs back to back, the order alternating; each figure is the
    median over pairs of the pair's own comparison, with its min and max."""
    runs: list[dict[str, dict[str, Any]]] = []
    for r in range(pairs):
        pair: dict[str, dict[str, Any]] = {}
        for kind in ("noop", "metered") if r % 2 == 0 else ("metered", "noop"):
            pair[kind] = await _one_run(settings, redis, pool, kind=kind, n=jobs, teams=teams)
        m, o = pair["metered"], pair["noop"]
        print(
            f"    pair {r + 1}/{pairs}: user CPU ms/job metered {m['user_cpu_ms_per_job']:.3f}"
            f" no-op {o['user_cpu_ms_per_job']:.3f}"
            f" (+{_pct_over(m['user_cpu_ms_per_job'], o['user_cpu_ms_per_job']):.1f} %)"
            f"  jobs/s {m['per_s']:.0f} / {o['per_s']:.0f}"
            f"  mismatches {m['mismatches'] + o['mismatches']}",
            flush=True,
        )
        runs.append(pair)

    def over(field: str) -> dict[str, Any]:
        return spread([_pct_over(p["metered"][field], p["noop"][field]) for p in runs], 2)

    def each(kind: str, field: str) -> dict[str, Any]:
        return spread([p[kind][field] for p in runs], 4)

    return {
        "teams": len(teams),
        # The judged figure: the worker's own work per metered job over a no-op job's.
        "user_cpu_overhead_pct": over("user_cpu_ms_per_job"),
        "cpu_overhead_pct": over("cpu_ms_per_job"),
        "throughput_overhead_pct": spread(
            [(1 - p["metered"]["per_s"] / p["noop"]["per_s"]) * 100 for p in runs], 2
        ),
        "metered_user_cpu_ms_per_job": each("metered", "user_cpu_ms_per_job"),
        "noop_user_cpu_ms_per_job": each("noop", "user_cpu_ms_per_job"),
        "metered_cpu_ms_per_job": each("metered", "cpu_ms_per_job"),
        "noop_cpu_ms_per_job": each("noop", "cpu_ms_per_job"),
        "metered_per_s": each("metered", "per_s"),
        "noop_per_s": each("noop", "per_s"),
        "metered_sleeps_per_job": each("metered", "sleeps_per_job"),
        "noop_sleeps_per_job": each("noop", "sleeps_per_job"),
        "mismatches": sum(p[k]["mismatches"] for p in runs for k in p),
        "pairs": runs,
    }


async def run(dsn: str, redis_url: str, *, quick: bool) -> dict[str, Any]:
    """Metered against no-op jobs on a migrated Postgres and a running Redis
    (JSON `arq_overhead`): one entry per scenario, `teams` and `hot_team`."""
    quiet_logs()
    shape = QUICK if quick else FULL
    settings = bench_settings(dsn, redis_url)
    spread_teams = [f"arqb-team-{n}" for n in range(SPREAD_TEAMS)]
    hot = ["arqb-hot"]
    async with bench_clients(dsn, redis_url, spread_teams + hot) as (pool, redis):
        # Both paths once (imports, first-use caches, plans), verified, not measured.
        warmup = [
            await _one_run(
                settings, redis, pool, kind=kind, n=shape["warmup_jobs"], teams=spread_teams
            )
            for kind in ("noop", "metered")
        ]
        scenarios: dict[str, Any] = {}
        for name, teams in (("teams", spread_teams), ("hot_team", hot)):
            print(f"  arq {name} ({len(teams)} team{'s' if len(teams) > 1 else ''}):", flush=True)
            scenarios[name] = await _scenario(
                settings, redis, pool, teams, jobs=shape["jobs"], pairs=shape["pairs"]
            )
        drift = await teams_drift(pool, spread_teams + hot)
    mismatches = sum(s["mismatches"] for s in scenarios.values())
    mismatches += sum(w["mismatches"] for w in warmup)
    return {
        **scenarios,
        "jobs": shape["jobs"],
        "pairs": shape["pairs"],
        "max_jobs": settings.worker_concurrency,
        "spread_teams": SPREAD_TEAMS,
        "actions": list(ACTIONS),
        "target_pct": 15.0,
        "mismatches": mismatches,
        "drift_rows": drift,
        "verified": mismatches == 0 and not drift,
    }


def main(argv: list[str] | None = None) -> int:
    return standalone_main(
        argv,
        prog="python -m bench arq",
        doc=__doc__,
        quick_help="5 pairs of 1,000-job runs (default: 7 pairs of 3,000)",
        run=run,
    )


if __name__ == "__main__":
    raise SystemExit(main())
