"""End to end through arq: metered jobs vs no-op jobs, same worker settings (issue 6, item 2).

    python -m bench.arq_overhead [--quick] [--json FILE] [--profile FILE]

`run(dsn, redis_url, quick=...)` is what `python -m bench` calls, on servers it
started; run as a module this file starts its own in a temporary data dir.

Both sides run an in-process `TokensWorker` (arq's `Worker`, see below) in burst mode built from
`worker.settings.worker_kwargs` (same max_jobs, job timeout, tries, poll delay,
Redis, `on_startup` with its Postgres pool): the only difference is the
functions it registers. The periodic cron jobs (reconcile and hold-expiry
sweep, every 5 minutes) are left out of both, or a run that crossed a 5-minute
mark would time one reconcile.

- metered: the project's `debounce` and `enrich` jobs (alternating) with the
  offline sandbox providers and no added sandbox latency: payload validation,
  `Ledger.hold`, the sandbox search, `Ledger.capture`, metrics, the result;
- no-op: one function that takes the same arguments and returns a small dict.

N jobs with the same kind of arguments (a team and one lead) are enqueued
with `ArqRedis.enqueue_job` before the worker starts (not timed). The time is
taken from the end of the worker's `on_startup` (identical on both sides, it
opens the Postgres pool) to `Worker.main()` returning, which in burst mode is
when the queue is empty and every job has finished; startup is reported apart.
overhead_pct = (1 - metered_per_s / noop_per_s) x 100.

Scenarios: `teams` spreads the metered jobs round-robin over 8 teams, the
headline figure; `hot_team` puts them all on one team (one billing-month row
takes every hold and capture). Quick: one pair of runs per scenario; full:
five pairs, the order alternating, medians reported with every run.

Each run also reports `steady_per_s` (the rate between the 10th and 90th
percentile of job finish times, without ramp-up and tail) and
`cpu_ms_per_job` (this process's CPU time, worker included, per job), which
moves less than throughput when other processes share the machine.
cpu_overhead_pct = (metered cpu_ms_per_job / no-op cpu_ms_per_job - 1) x 100:
the metering overhead on the worker itself (issue 15), without the CPU that
Postgres spends on the same cores (throughput's overhead_pct includes it).

Both sides run the production worker class, `worker.settings.TokensWorker`
(the one `tokens worker` runs), which starts the jobs one poll takes together
(up to `start_group`); before issue 15 part 2 the bench ran arq's plain
`Worker` on both sides.

Honesty checks, after every metered run: every job's stored arq result is
`captured`; the ledger has exactly N charges with the run's keys, all
captured; the teams' running totals grew by exactly their tokens, nothing left
held. At the end the bench teams' months are checked against the sum of their
charges. Anything else is counted in `mismatches` (examples kept) and makes
`verified` false.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import result_key_prefix
from arq.jobs import JobResult, deserialize_result
from arq.worker import Worker, func

from bench.servers import fresh_servers, quiet_logs, sleeps_so_far, user_cpu_s
from db.pool import create_pool as create_pg_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from runtime.config import Settings
from worker.memo import _SHARED as _SHARED_MEMOS
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

# quick: one pair per scenario; full: more jobs, pairs repeated, medians reported.
QUICK = {"jobs": 1_500, "repeats": 1, "warmup_jobs": 200}
FULL = {"jobs": 5_000, "repeats": 5, "warmup_jobs": 500}


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


def _steady_per_s(results: list[JobResult | None]) -> float | None:
    """Jobs per second between the 10th and the 90th percentile of finish times:
    the rate without the ramp-up (pool connections opening) and the tail."""
    finished = sorted(r.finish_time.timestamp() for r in results if r is not None)
    lo, hi = len(finished) // 10, len(finished) * 9 // 10
    if hi <= lo or finished[hi] <= finished[lo]:
        return None
    return round((hi - lo) / (finished[hi] - finished[lo]), 1)


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


def _memo_stats(worker: Worker) -> dict[str, Any] | None:
    """How the worker's search memo batched its writes (None when it wrote none)."""
    memo = _SHARED_MEMOS.get(worker.ctx.get("redis"))
    if memo is None or not memo.flushes:
        return None
    return {
        "flushes": memo.flushes,
        "puts": memo.puts,
        "mean_batch": round(memo.puts / memo.flushes, 2),
    }


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
    check_ledger: bool = True,
) -> dict[str, Any]:
    """One burst worker over n queued jobs. `check_ledger=False`: the jobs' results
    are still checked, the ledger is not (bench/arq_breakdown.py answers them
    without Postgres)."""
    metered = kind == "metered"
    tag = f"arqb-{uuid.uuid4().hex[:10]}"
    jobs = _jobs(tag, n, teams, metered)
    if await redis.zcard(QUEUE):
        raise RuntimeError(f"queue {QUEUE} is not empty before the benchmark run")
    before = await _month_totals(pool, teams)
    t_enq = time.perf_counter()
    await _enqueue(redis, jobs)
    enqueue_s = time.perf_counter() - t_enq
    load = os.getloadavg()[0]
    functions = None if metered else [func(noop, name=NOOP)]
    assert settings.redis_url is not None
    run = await _worker_run(settings, settings.redis_url, functions)
    worker = run.worker
    job_ids = [j[0] for j in jobs]
    results = await _results(redis, job_ids)
    await _forget_results(redis, job_ids)
    out: dict[str, Any] = {
        "per_s": round(n / run.jobs_s, 1),
        "steady_per_s": _steady_per_s(results),
        "seconds": round(run.jobs_s, 4),
        "cpu_ms_per_job": round(run.cpu_s / n * 1000, 4),
        # Its user-mode part: the code's work, without the kernel's (syscalls, wake-ups).
        "user_cpu_ms_per_job": round(run.user_s / n * 1000, 4),
        # How often the worker went idle and was woken, per job: on a VM each wake
        # costs tens of us of CPU (bench.servers.wake_cost_us), whatever the code.
        "sleeps_per_job": round(run.sleeps / n, 3),
        "startup_s": round(run.startup_s, 4),
        "enqueue_s": round(enqueue_s, 4),
        "loadavg_1m": round(load, 2),
        "complete": worker.jobs_complete,
        "failed": worker.jobs_failed,
        "retried": worker.jobs_retried,
    }
    if metered:
        out["group_commit"] = _group_commit_stats(worker)
        out["memo"] = _memo_stats(worker)
    expected = "captured" if metered else "ok"
    mismatches: list[str] = []
    for job_id, r in zip(job_ids, results, strict=True):
        status = r.result.get("status") if r is not None and r.success else None
        if status != expected:
            mismatches.append(f"{job_id}: {'no result' if r is None else r.result!r}")
    if metered and check_ledger:
        facts, problems = await _check_ledger(pool, tag, n, teams, before)
        out |= facts
        mismatches += problems
    out["mismatches"] = len(mismatches)
    if mismatches:
        out["mismatch_examples"] = mismatches[:REPORTED_MISMATCHES]
    return out


def _overhead(metered_per_s: float, noop_per_s: float) -> float:
    return round((1 - metered_per_s / noop_per_s) * 100, 2)


async def _scenario(
    settings: Settings,
    redis: ArqRedis,
    pool: asyncpg.Pool,
    teams: list[str],
    *,
    jobs: int,
    repeats: int,
) -> dict[str, Any]:
    """`repeats` pairs, the order alternating (noop first, then metered first, ...)."""
    noops: list[dict[str, Any]] = []
    metereds: list[dict[str, Any]] = []
    for r in range(repeats):
        order = ("noop", "metered") if r % 2 == 0 else ("metered", "noop")
        for kind in order:
            point = await _one_run(settings, redis, pool, kind=kind, n=jobs, teams=teams)
            (noops if kind == "noop" else metereds).append(point)
            print(
                f"    {kind:<8} {point['per_s']:>8.1f} jobs/s  {point['seconds']:.3f} s"
                f"  cpu {point['cpu_ms_per_job']:.3f} ms/job  mismatches {point['mismatches']}",
                flush=True,
            )
    metered_per_s = statistics.median(p["per_s"] for p in metereds)
    noop_per_s = statistics.median(p["per_s"] for p in noops)
    mismatches = sum(p["mismatches"] for p in metereds + noops)
    return {
        "metered_per_s": round(metered_per_s, 1),
        "noop_per_s": round(noop_per_s, 1),
        "overhead_pct": _overhead(metered_per_s, noop_per_s),
        "pair_overheads_pct": [
            _overhead(m["per_s"], o["per_s"]) for m, o in zip(metereds, noops, strict=True)
        ],
        "teams": len(teams),
        "mismatches": mismatches,
        "metered_runs": metereds,
        "noop_runs": noops,
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


def _summary(name: str, scenario: dict[str, Any]) -> dict[str, Any]:
    def median(kind: str, field: str) -> float | None:
        values = [r[field] for r in scenario[f"{kind}_runs"] if r[field] is not None]
        return round(statistics.median(values), 4) if values else None

    metered_cpu = median("metered", "cpu_ms_per_job")
    noop_cpu = median("noop", "cpu_ms_per_job")
    metered_user = median("metered", "user_cpu_ms_per_job")
    noop_user = median("noop", "user_cpu_ms_per_job")
    return {
        "scenario": name,
        "metered_per_s": scenario["metered_per_s"],
        "noop_per_s": scenario["noop_per_s"],
        "overhead_pct": scenario["overhead_pct"],
        "metered_steady_per_s": median("metered", "steady_per_s"),
        "noop_steady_per_s": median("noop", "steady_per_s"),
        "metered_cpu_ms_per_job": metered_cpu,
        "noop_cpu_ms_per_job": noop_cpu,
        # The worker's own CPU per metered job over a no-op job's, minus 1.
        "cpu_overhead_pct": (
            round((metered_cpu / noop_cpu - 1) * 100, 2) if metered_cpu and noop_cpu else None
        ),
        "metered_user_cpu_ms_per_job": metered_user,
        "noop_user_cpu_ms_per_job": noop_user,
        # The same in user-mode CPU only: what the code does, apart from what the kernel
        # (and a VM's hypervisor) charges for its syscalls and wake-ups.
        "user_cpu_overhead_pct": (
            round((metered_user / noop_user - 1) * 100, 2) if metered_user and noop_user else None
        ),
    }


BEFORE_SCRIPT = """
import asyncio, json, sys
from bench.arq_overhead import run
from bench.servers import quiet_logs
quiet_logs()
r = asyncio.run(run(sys.argv[1], sys.argv[2], quick=sys.argv[3] == "1"))
print(json.dumps({k: v for k, v in r.items() if k not in ("scenarios", "warmup")}))
"""


def _extract(rev: str, tree: str) -> None:
    """Commit `rev` of this repository, as files under `tree`."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)


async def run_before(rev: str, dsn: str, redis_url: str, *, quick: bool) -> dict[str, Any]:
    """This same benchmark as commit `rev` has it, its own code (`git archive`) in a
    child process on the same servers, right after this one: its metered and no-op
    runs against each other, so that its overhead is comparable with this run's."""
    with tempfile.TemporaryDirectory(prefix="tokens-before-") as tree:
        await asyncio.to_thread(_extract, rev, tree)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            BEFORE_SCRIPT,
            dsn,
            redis_url,
            "1" if quick else "0",
            cwd=tree,
            env={**os.environ, "PYTHONPATH": tree},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the benchmark of {rev} failed ({proc.returncode})")
    lines = out.decode().strip().splitlines()
    for line in lines[:-1]:
        print(f"  [{rev}] {line}", flush=True)
    result: dict[str, Any] = json.loads(lines[-1])
    return {"rev": rev, **result}


async def run(
    dsn: str, redis_url: str, *, quick: bool, before: str | None = None
) -> dict[str, Any]:
    """Metered vs no-op arq throughput on a migrated Postgres and a running Redis.

    The headline (`metered_per_s`, `noop_per_s`, `overhead_pct`) is the `teams`
    scenario, medians over the runs; `hot_team` has the same keys. `before`: a
    commit whose own version of this benchmark then runs on the same servers
    (`run_before`), reported under `before`.
    """
    quiet_logs()
    shape = QUICK if quick else FULL
    settings = bench_settings(dsn, redis_url)
    spread = [f"arqb-team-{n}" for n in range(SPREAD_TEAMS)]
    hot = ["arqb-hot"]
    async with bench_clients(dsn, redis_url, spread + hot) as (pool, redis):
        # Both paths once (imports, first-use caches, plans), not measured but verified.
        warmup = [
            await _one_run(settings, redis, pool, kind=kind, n=shape["warmup_jobs"], teams=spread)
            for kind in ("noop", "metered")
        ]
        scenarios: dict[str, Any] = {}
        for name, teams in (("teams", spread), ("hot_team", hot)):
            print(f"  arq {name} ({len(teams)} team{'s' if len(teams) > 1 else ''}):", flush=True)
            scenarios[name] = await _scenario(
                settings, redis, pool, teams, jobs=shape["jobs"], repeats=shape["repeats"]
            )
        drift = await _teams_drift(pool, spread + hot)

    mismatches = sum(s["mismatches"] for s in scenarios.values())
    mismatches += sum(w["mismatches"] for w in warmup)
    earlier = None
    if before is not None:
        print(f"  arq, the same benchmark at {before}:", flush=True)
        earlier = await run_before(before, dsn, redis_url, quick=quick)
    return {
        **{k: v for k, v in _summary("teams", scenarios["teams"]).items() if k != "scenario"},
        "jobs": shape["jobs"],
        "repeats": shape["repeats"],
        "max_jobs": settings.worker_concurrency,
        "job_timeout_s": settings.job_timeout_seconds,
        "job_max_tries": settings.job_max_tries,
        "teams": SPREAD_TEAMS,
        "actions": list(ACTIONS),
        "target_pct": 15.0,
        "hot_team": _summary("hot_team", scenarios["hot_team"]),
        "mismatches": mismatches,
        "drift_rows": drift,
        "verified": mismatches == 0 and not drift,
        "scenarios": scenarios,
        "warmup": warmup,
        "before": earlier,
    }


async def _standalone(quick: bool, profile: Path | None, before: str | None) -> dict[str, Any]:
    async with fresh_servers("tokens-arqbench-") as servers:
        redis_url = servers.redis_url()
        if profile is None:
            return await run(servers.dsn, redis_url, quick=quick, before=before)
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            return await run(servers.dsn, redis_url, quick=quick)
        finally:
            profiler.disable()
            profiler.dump_stats(profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.arq_overhead", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one pair of 1,500-job runs")
    parser.add_argument("--json", type=Path, help="write the result as one JSON object here")
    parser.add_argument("--profile", type=Path, help="cProfile the whole run into this file")
    parser.add_argument("--before", help="also run this benchmark as this commit has it")
    args = parser.parse_args(argv)
    quiet_logs()
    result = asyncio.run(_standalone(args.quick, args.profile, args.before))
    summary = {k: v for k, v in result.items() if k not in ("scenarios", "warmup")}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
