"""End to end: enqueue -> arq worker -> holds, provider calls, captures and releases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.worker import Worker

from ledger.catalog import DEFAULT_CATALOG
from ledger.errors import BadInput, NotMigrated
from ledger.service import Ledger
from runtime.config import Settings
from tests.conftest import at, with_database
from worker.client import enqueue, result
from worker.queue import QUEUE
from worker.settings import worker_kwargs
from worker.tasks import expire_holds, queue_team_reconcile

ENRICH = "https://enrich.test"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    await pool.flushdb()
    yield pool
    await pool.aclose()


def settings_for(database_url: str, redis_url: str, **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        retry_backoff_seconds=0.01,
        job_max_tries=3,
        **extra,
    )


async def run_burst(settings: Settings) -> Worker:
    assert settings.redis_url is not None
    w = Worker(**worker_kwargs(settings, settings.redis_url, burst=True))
    try:
        await w.main()
    finally:
        await w.close()
    return w


async def team(ledger: Ledger, limit: int = 0) -> None:
    await ledger.set_team(
        "acme",
        plan="email_outreach",
        seats=1,
        interval="month",
        anchor=at("2026-01-01"),
        at=at("2026-01-01"),
    )
    if limit:
        await ledger.set_limit("acme", limit, actor="ann", role="admin", at=at("2026-01-01"))


def leads(n: int, domain: str = "acme.io") -> dict[str, Any]:
    return {"leads": [{"id": f"l{i}", "email": f"p{i}@{domain}"} for i in range(n)]}


async def test_enrich_list_charges_each_lead_once(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await team(ledger)
    jobs = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=leads(3), job_id="b1")
    assert [j.job_id for j in jobs] == ["acme~b1:l0", "acme~b1:l1", "acme~b1:l2"]
    again = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=leads(3), job_id="b1")
    assert not any(j.queued for j in again)  # the same enqueue twice queues nothing new
    await run_burst(settings_for(database_url, redis_url))
    out = [await result(redis, j.job_id) for j in jobs]
    assert [r["status"] for r in out] == ["captured"] * 3
    assert all(r["sandbox"] and r["provider"] == "sandbox-enrich" for r in out)
    history = await ledger.history("acme")
    keys = sorted(c.idempotency_key for c in history)
    assert keys == ["acme~b1:l0:l0", "acme~b1:l1:l1", "acme~b1:l2:l2"]
    assert all(c.state == "captured" and c.tokens == 10 for c in history)


async def test_out_of_tokens_never_reaches_the_provider(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await team(ledger)  # 250 free, no additional: 25 enrichments
    jobs = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=leads(30))
    with respx.mock(base_url=ENRICH, assert_all_called=True) as mock:
        route = mock.post("/v1/enrich").respond(json={"found": True, "person": {"x": 1}})
        await run_burst(settings_for(database_url, redis_url, enrich_base_url=ENRICH))
    out = [await result(redis, j.job_id) for j in jobs]
    assert sorted(r["status"] for r in out) == ["captured"] * 25 + ["refused"] * 5
    assert route.call_count == 25
    refused = [r for r in out if r["status"] == "refused"]
    assert all(r["reason"] == "not enough tokens" for r in refused)
    history = await ledger.history("acme")
    assert len(history) == 25 and all(c.state == "captured" for c in history)


async def test_provider_5xx_then_success_charges_once(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await team(ledger)
    [job] = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=leads(1))
    with respx.mock(base_url=ENRICH) as mock:
        route = mock.post("/v1/enrich").mock(
            side_effect=[
                httpx.Response(503),
                httpx.Response(200, json={"found": False}),
            ]
        )
        await run_burst(settings_for(database_url, redis_url, enrich_base_url=ENRICH))
    out = await result(redis, job.job_id)
    assert out["status"] == "captured" and out["outcome"] == "not_found"  # spent on search
    assert route.call_count == 2
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10


async def test_provider_down_on_every_retry_charges_nothing(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await team(ledger)
    [job] = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=leads(1))
    with respx.mock(base_url=ENRICH) as mock:
        route = mock.post("/v1/enrich").mock(side_effect=httpx.ConnectError("refused"))
        await run_burst(settings_for(database_url, redis_url, enrich_base_url=ENRICH))
    out = await result(redis, job.job_id)
    assert out["status"] == "failed" and out["charged"] is False
    assert route.call_count == 3  # job_max_tries
    [charge] = await ledger.history("acme")
    assert charge.state == "released"


async def test_malformed_payload_fails_the_job_and_charges_nothing(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await team(ledger)
    await redis.enqueue_job(
        "debounce", "acme", {"first_name": "no email"}, _job_id="bad", _queue_name="tokens:queue"
    )
    await run_burst(settings_for(database_url, redis_url))
    with pytest.raises(Exception, match=r"malformed debounce lead payload: .*needs an email"):
        await result(redis, "bad")
    assert await ledger.history("acme") == []


@pytest.mark.parametrize(
    ("lead_id", "says"),
    [
        ("a\x00b", "control characters"),  # Postgres cannot store a NUL
        ("line\nbreak", "control characters"),
        ("x" * 130, "at most 255"),  # key b1:<id>:<id>: 264 characters
    ],
)
async def test_a_lead_the_worker_could_not_charge_is_refused_at_enqueue(
    redis: ArqRedis, lead_id: str, says: str
) -> None:
    payload = {
        "leads": [{"id": "fine", "email": "a@acme.io"}, {"id": lead_id, "email": "b@acme.io"}]
    }
    with pytest.raises(BadInput, match=says):
        await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=payload, job_id="b1")
    assert await redis.zcard("tokens:queue") == 0  # nothing of the request was queued


async def test_threshold_capture_enqueues_the_team_reconcile(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    await team(ledger, limit=10_000)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    await ledger.charge("acme", "debounce", 250 + 4995, key="bulk", at=now)
    jobs = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=leads(1))
    await run_burst(settings_for(database_url, redis_url))
    assert (await result(redis, jobs[0].job_id))["status"] == "captured"
    bills = await pool.fetch("SELECT reason, tokens, last_error FROM bills")
    assert [(b["reason"], b["tokens"]) for b in bills] == [("threshold", 5005)]
    assert "STRIPE_API_KEY" in bills[0]["last_error"]


async def test_a_crossing_while_the_team_reconcile_is_taken_queues_one_behind_it(
    redis: ArqRedis,
) -> None:
    assert await queue_team_reconcile(redis, "acme")
    assert not await queue_team_reconcile(redis, "acme")  # queued: it will bill this too
    # Now running (past making the bills): arq refuses its id until the run ends, and a
    # capture now used to queue nothing and wait for the periodic run.
    await redis.set(in_progress_key_prefix + "reconcile:acme", b"1")
    assert await queue_team_reconcile(redis, "acme")
    assert not await queue_team_reconcile(redis, "acme")  # one runs, one waits: enough
    queued = sorted(j.decode() for j in await redis.zrange(QUEUE, 0, -1))
    assert queued == ["reconcile:acme", "reconcile:acme:next"]
    assert await queue_team_reconcile(redis, "other")  # per team


async def test_the_sweep_leaves_the_holds_of_jobs_arq_still_has(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    # A job put back by a provider's 429 may wait behind a long queue for longer than
    # the hold TTL: its hold must be there when it runs.
    await team(ledger)
    held_at = at("2026-01-02")
    for job in ("waiting", "gone"):
        await ledger.hold("acme", "enrich", 1, key=job, at=held_at, job_id=job)
    await redis.enqueue_job("enrich", "acme", {}, _job_id="waiting", _queue_name=QUEUE)
    deps = {"settings": settings_for(database_url, redis_url), "ledger": ledger,
            "clock": lambda: held_at + timedelta(hours=1)}  # fmt: skip
    out = await expire_holds({"deps": deps, "redis": redis})
    assert out == {"expired": 1, "kept_for_their_jobs": 1}
    assert [(c.idempotency_key, c.state) for c in await ledger.history("acme")] == [
        ("waiting", "held"),
        ("gone", "expired"),
    ]
    await redis.delete(job_key_prefix + "waiting")  # arq is done with it, unsettled
    assert await expire_holds({"deps": deps, "redis": redis}) == {
        "expired": 1,
        "kept_for_their_jobs": 0,
    }


async def test_concurrent_workers_share_the_queue(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await team(ledger, limit=1000)
    jobs = await enqueue(redis, DEFAULT_CATALOG, "acme", "debounce", payload=leads(120))
    settings = settings_for(database_url, redis_url)
    await asyncio.gather(run_burst(settings), run_burst(settings))
    out = [await result(redis, j.job_id) for j in jobs]
    assert [r["status"] for r in out] == ["captured"] * 120
    assert len(await ledger.history("acme")) == 120


async def test_a_worker_on_an_unmigrated_database_stops_and_leaves_no_connection(
    server_dsn: str, redis_url: str
) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute("DROP DATABASE IF EXISTS t_unmigrated WITH (FORCE)")
        await admin.execute("CREATE DATABASE t_unmigrated")
        settings = settings_for(with_database(server_dsn, "t_unmigrated"), redis_url)
        on_startup = worker_kwargs(settings, redis_url, burst=True)["on_startup"]
        with pytest.raises(NotMigrated, match="tokens migrate"):
            await on_startup({})
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 't_unmigrated'"
        )
        assert left == 0
    finally:
        await admin.execute("DROP DATABASE IF EXISTS t_unmigrated WITH (FORCE)")
        await admin.close()
