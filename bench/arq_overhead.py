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

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import result_key_prefix
from arq.jobs import JobResult, deserialize_result
from arq.worker import Worker, func

from bench.servers import quiet_logs, sleeps_so_far, spread, standalone_main, user_cpu_s
from db.pool import create_pool as create_pg_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from runtime.config import Settings
from worker.queue import QUEUE
from worker.settings import TokensWorker, worker_kwargs

ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
SETUP_AT = datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)
SPREAD_TEAMS = 8
SEATS = 1_000
HUGE_LIMIT = 10**11
ACTIONS = ("debounce", "enrich")
NOOP = "bench_noop"
ENQUEUE_CONCURRENCY = 64
REPORTED_MISMATCHES = 10

QUICK = {"jobs": 1_000, "pairs": 5, "warmup_jobs": 200}
FULL = {"jobs": 3_000, "pairs": 7, "warmup_jobs": 500}


async def noop(ctx: dict[str, Any], team: str, lead: dict[str, Any]) -> dict[str, Any]:
    """The baseline job: same arguments as a metered lead job, nothing done."""
    return {"status": "ok", "job_id": ctx["job_id"]}


def bench_settings(dsn: str, redis_url: str) -> Settings:
    """The project's defaults (max_jobs, job timeout, tries), offline sandbox providers,
    no sandbox latency, no Stripe: whatever the environment says."""
    return Settings(
        database_url=dsn,
        redis_url=redis_url,
        ai_base_url=None,
        enrich_base_url=None,
        verify_base_url=None,
        sandbox_latency_ms=0,
        stripe_api_key=None,
        metrics_port=None,
    )


@contextlib.asynccontextmanager
async def bench_clients(
    dsn: str, redis_url: str, teams: list[str]
) -> AsyncIterator[tuple[asyncpg.Pool, ArqRedis]]:
    """A small Postgres pool and an arq Redis pool, the catalog synced and `teams`
    set up (plenty of free tokens), closed afterwards."""
    pool = await create_pg_pool(dsn, min_size=1, max_size=4)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        ledger = Ledger(pool, DEFAULT_CATALOG)
        await ledger.sync_catalog()
        await _setup_teams(ledger, teams)
        yield pool, redis
    finally:
        await redis.aclose()
        await pool.close()


async def _setup_teams(ledger: Ledger, teams: list[str]) -> None:
    for team in teams:
        await ledger.set_team(
            team, plan="sales_engagement", seats=SEATS, interval="month", anchor=ANCHOR, at=SETUP_AT
        )
        await ledger.set_limit(team, HUGE_LIMIT, actor="bench", role="admin", at=SETUP_AT)


def _jobs(tag: str, n: int, teams: list[str], metered: bool) -> list[tuple[str, str, str, Any]]:
    """(job id, function, team, lead): leads alternate between debounce and enrich."""
    out = []
    for i in range(n):
        lead = {"id": f"l{i}", "email": f"person{i}@lead{i % 97}.example"}
        function = ACTIONS[i % len(ACTIONS)] if metered else NOOP
        out.append((f"{tag}:{i:06d}", function, teams[i % len(teams)], lead))
    return out


async def _enqueue(redis: ArqRedis, jobs: list[tuple[str, str, str, Any]]) -> None:
    sem = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

    async def one(job_id: str, function: str, team: str, lead: Any) -> None:
        async with sem:
            job = await redis.enqueue_job(function, team, lead, _job_id=job_id, _queue_name=QUEUE)
        if job is None:
            raise RuntimeError(f"job {job_id} was already queued")

    await asyncio.gather(*(one(*j) for j in jobs))


async def _results(redis: ArqRedis, job_ids: list[str]) -> list[JobResult | None]:
    """Each job's stored arq result (None when there is none)."""
    out: list[JobResult | None] = []
    for start in range(0, len(job_ids), 1_000):
        chunk = job_ids[start : start + 1_000]
        raw = await redis.mget([result_key_prefix + j for j in chunk])
        out += [None if blob is None else deserialize_result(blob) for blob in raw]
    return out


async def _forget_results(redis: ArqRedis, job_ids: list[str]) -> None:
    """Read once, the results need not stay in Redis for the day arq keeps them."""
    for start in range(0, len(job_ids), 1_000):
        await redis.unlink(*(result_key_prefix + j for j in job_ids[start : start + 1_000]))


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


async def _month_totals(pool: asyncpg.Pool, teams: list[str]) -> tuple[int, int]:
    """(spent, held) tokens over every billing month of these teams."""
    row = await pool.fetchrow(
        "SELECT coalesce(sum(free_spent + additional_spent), 0) AS spent, "
        "coalesce(sum(free_held + additional_held), 0) AS held "
        "FROM billing_months WHERE team_id = ANY($1::text[])",
        teams,
    )
    assert row is not None
    return int(row["spent"]), int(row["held"])


async def _check_ledger(
    pool: asyncpg.Pool, tag: str, n: int, teams: list[str], before: tuple[int, int]
) -> tuple[dict[str, Any], list[str]]:
    """The run's charges: exactly n, all captured, and the teams' running totals
    grew by exactly their tokens (nothing left held)."""
    rows = await pool.fetch(
        "SELECT state, count(*) AS n, count(DISTINCT idempotency_key) AS keys, "
        "coalesce(sum(tokens), 0) AS tokens FROM charges "
        "WHERE team_id = ANY($1::text[]) AND idempotency_key LIKE $2 GROUP BY state",
        teams,
        tag + ":%",
    )
    by_state = {r["state"]: int(r["n"]) for r in rows}
    keys = sum(int(r["keys"]) for r in rows)
    tokens = sum(int(r["tokens"]) for r in rows if r["state"] == "captured")
    spent, held = await _month_totals(pool, teams)
    spent_delta, held_delta = spent - before[0], held - before[1]
    problems = []
    if by_state != {"captured": n} or keys != n:
        problems.append(f"ledger: charges by state {by_state} ({keys} keys), expected {n} captured")
    if spent_delta != tokens or held_delta != 0:
        problems.append(
            f"ledger: month totals moved by spent {spent_delta:+}, held {held_delta:+}; "
            f"the run's captured charges hold {tokens} tokens"
        )
    facts = {"charges": by_state, "tokens_captured": tokens, "month_spent_delta": spent_delta}
    return facts, problems


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
    jobs = _jobs(tag, n, teams, metered)
    if await redis.zcard(QUEUE):
        raise RuntimeError(f"queue {QUEUE} is not empty before the benchmark run")
    before = await _month_totals(pool, teams)
    await _enqueue(redis, jobs)
    functions = None if metered else [func(noop, name=NOOP)]
    assert settings.redis_url is not None
    run = await _worker_run(settings, settings.redis_url, functions)
    worker = run.worker
    job_ids = [j[0] for j in jobs]
    results = await _results(redis, job_ids)
    await _forget_results(redis, job_ids)
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
        facts, problems = await _check_ledger(pool, tag, n, teams, before)
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


async def _teams_drift(pool: asyncpg.Pool, teams: list[str]) -> list[dict[str, Any]]:
    """These teams' months whose running totals differ from the sum of their charges."""
    rows = await pool.fetch(
        """
        SELECT b.team_id, b.period_start,
               b.free_spent + b.additional_spent AS spent, b.free_held + b.additional_held AS held,
               coalesce(s.spent, 0) AS charges_spent, coalesce(s.held, 0) AS charges_held
        FROM billing_months b
        LEFT JOIN (
            SELECT team_id, period_start,
                   sum(tokens) FILTER (WHERE state = 'captured') AS spent,
                   sum(tokens) FILTER (WHERE state = 'held') AS held
            FROM charges WHERE team_id = ANY($1::text[]) GROUP BY team_id, period_start
        ) s USING (team_id, period_start)
        WHERE b.team_id = ANY($1::text[])
          AND (b.free_spent + b.additional_spent, b.free_held + b.additional_held)
              IS DISTINCT FROM (coalesce(s.spent, 0), coalesce(s.held, 0))
        """,
        teams,
    )
    return [{k: str(v) for k, v in r.items()} for r in rows]


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
        drift = await _teams_drift(pool, spread_teams + hot)
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
