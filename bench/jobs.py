"""What the job benchmarks share: their settings and clients, lead jobs to queue, and
the checks that every job was charged exactly once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import result_key_prefix
from arq.jobs import JobResult, deserialize_result

from db.pool import create_pool as create_pg_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from runtime.config import Settings
from worker.queue import QUEUE

ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
SETUP_AT = datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)
SPREAD_TEAMS = 8
SEATS = 1_000
HUGE_LIMIT = 10**11
ACTIONS = ("debounce", "enrich")
NOOP = "bench_noop"
ENQUEUE_CONCURRENCY = 64


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
        await setup_teams(ledger, teams)
        yield pool, redis
    finally:
        await redis.aclose()
        await pool.close()


async def setup_teams(ledger: Ledger, teams: list[str]) -> None:
    for team in teams:
        await ledger.set_team(
            team, plan="sales_engagement", seats=SEATS, interval="month", anchor=ANCHOR, at=SETUP_AT
        )
        await ledger.set_limit(team, HUGE_LIMIT, actor="bench", role="admin", at=SETUP_AT)


def lead_jobs(tag: str, n: int, teams: list[str], metered: bool) -> list[tuple[str, str, str, Any]]:
    """(job id, function, team, lead): leads alternate between debounce and enrich."""
    out = []
    for i in range(n):
        lead = {"id": f"l{i}", "email": f"person{i}@lead{i % 97}.example"}
        function = ACTIONS[i % len(ACTIONS)] if metered else NOOP
        out.append((f"{tag}:{i:06d}", function, teams[i % len(teams)], lead))
    return out


async def enqueue(redis: ArqRedis, jobs: list[tuple[str, str, str, Any]]) -> None:
    sem = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

    async def one(job_id: str, function: str, team: str, lead: Any) -> None:
        async with sem:
            job = await redis.enqueue_job(function, team, lead, _job_id=job_id, _queue_name=QUEUE)
        if job is None:
            raise RuntimeError(f"job {job_id} was already queued")

    await asyncio.gather(*(one(*j) for j in jobs))


async def job_results(redis: ArqRedis, job_ids: list[str]) -> list[JobResult | None]:
    """Each job's stored arq result (None when there is none)."""
    out: list[JobResult | None] = []
    for start in range(0, len(job_ids), 1_000):
        chunk = job_ids[start : start + 1_000]
        raw = await redis.mget([result_key_prefix + j for j in chunk])
        out += [None if blob is None else deserialize_result(blob) for blob in raw]
    return out


async def forget_results(redis: ArqRedis, job_ids: list[str]) -> None:
    """Read once, the results need not stay in Redis for the day arq keeps them."""
    for start in range(0, len(job_ids), 1_000):
        await redis.unlink(*(result_key_prefix + j for j in job_ids[start : start + 1_000]))


async def month_totals(pool: asyncpg.Pool, teams: list[str]) -> tuple[int, int]:
    """(spent, held) tokens over every billing month of these teams."""
    row = await pool.fetchrow(
        "SELECT coalesce(sum(free_spent + additional_spent), 0) AS spent, "
        "coalesce(sum(free_held + additional_held), 0) AS held "
        "FROM billing_months WHERE team_id = ANY($1::text[])",
        teams,
    )
    assert row is not None
    return int(row["spent"]), int(row["held"])


async def check_ledger(
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
    spent, held = await month_totals(pool, teams)
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


async def teams_drift(pool: asyncpg.Pool, teams: list[str]) -> list[dict[str, Any]]:
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
