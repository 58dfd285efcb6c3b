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
from tests.clock import at
from tests.conftest import with_database
from tests.factories import make_team
from tests.faults import MonthLock, capture_fault
from worker.client import enqueue, result
from worker.memo import PREFIX as MEMO_PREFIX
from worker.memo import RedisSearchMemo
from worker.providers import Outcome, SearchResult
from worker.queue import OUTAGE_KEY_PREFIX, QUEUE
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
    fields: dict[str, Any] = {"retry_backoff_seconds": 0.01, "job_max_tries": 3, **extra}
    return Settings(database_url=database_url, redis_url=redis_url, **fields)


async def run_burst(settings: Settings, *, after_job_end: Any = None, **extra: Any) -> Worker:
    assert settings.redis_url is not None
    kwargs = worker_kwargs(settings, settings.redis_url, burst=True, **extra)
    w = Worker(**kwargs, after_job_end=after_job_end)
    try:
        await w.main()
    finally:
        await w.close()
    return w


def leads(n: int, domain: str = "acme.io") -> dict[str, Any]:
    return {"leads": [{"id": f"l{i}", "email": f"p{i}@{domain}"} for i in range(n)]}


async def test_enrich_list_charges_each_lead_once(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await make_team(ledger)
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
    await make_team(ledger)  # 250 free, no additional: 25 enrichments
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
    await make_team(ledger)
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
    await make_team(ledger)
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
    await make_team(ledger)
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
    await make_team(ledger, limit=10_000)
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
    await make_team(ledger)
    held_at = at("2026-01-02")
    for job in ("waiting", "gone"):
        await ledger.hold("acme", "enrich", 1, key=job, at=held_at, job_id=job)
    await redis.enqueue_job("enrich", "acme", {}, _job_id="waiting", _queue_name=QUEUE)
    deps = {"settings": settings_for(database_url, redis_url), "ledger": ledger,
            "clock": lambda: held_at + timedelta(hours=1)}  # fmt: skip
    out = await expire_holds({"deps": deps, "redis": redis})
    assert out == {"expired": 1, "kept_for_their_jobs": 1, "captured_searched": 0}
    assert [(c.idempotency_key, c.state) for c in await ledger.history("acme")] == [
        ("waiting", "held"),
        ("gone", "expired"),
    ]
    await redis.delete(job_key_prefix + "waiting")  # arq is done with it, unsettled
    assert await expire_holds({"deps": deps, "redis": redis}) == {
        "expired": 1,
        "kept_for_their_jobs": 0,
        "captured_searched": 0,
    }


def found(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"found": True, "person": {"title": "CTO"}})


async def test_a_capture_cut_off_by_a_statement_timeout_is_captured_not_lost(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    # The worker's statements time out after 300 ms; bill-making holds the team's
    # month row for a second while the job captures.
    await make_team(ledger)
    [job] = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=leads(1))
    lock = MonthLock(ledger.pool, "acme")

    async def search_then_bill(request: httpx.Request) -> httpx.Response:
        await lock.take()
        lock.later(lambda: asyncio.sleep(1.0), lock.commit)
        return found(request)

    short = f"{database_url}&statement_timeout=300"
    try:
        with respx.mock(base_url=ENRICH) as mock:
            route = mock.post("/v1/enrich").mock(side_effect=search_then_bill)
            await run_burst(settings_for(short, redis_url, enrich_base_url=ENRICH))
    finally:
        await lock.close()
    out = await result(redis, job.job_id)  # was: QueryCanceledError, the job failed for good
    assert out["status"] == "captured" and route.call_count == 1
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10


async def test_a_capture_refused_on_the_last_try_goes_back_and_is_captured_once(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    await make_team(ledger)
    settings = settings_for(database_url, redis_url, enrich_base_url=ENRICH, job_max_tries=1,
                            outage_wait_seconds=0.3)  # fmt: skip
    job_id = "b1:l0"
    # Enqueued near the end of arq's day: its key would expire while it waits.
    await redis.enqueue_job("enrich", "acme", {"id": "l0", "email": "p0@acme.io"},
                            _job_id=job_id, _queue_name=QUEUE, _expires=60)  # fmt: skip
    memo_key = f"{MEMO_PREFIX}acme:{job_id}:l0"
    seen: dict[str, int] = {}

    async with capture_fault(pool, "53100") as fault:

        async def clear_once_put_back(ctx: dict[str, Any]) -> None:
            # The run ended and the job went back to the queue (its only try given
            # back): look at what it left in Redis, then let Postgres take captures.
            if await redis.exists(OUTAGE_KEY_PREFIX + job_id) and not seen:
                seen["job_ttl_ms"] = await redis.pttl(job_key_prefix + job_id)
                seen["memo_ttl_ms"] = await redis.pttl(memo_key)
                await fault.clear()

        with respx.mock(base_url=ENRICH) as mock:
            route = mock.post("/v1/enrich").mock(side_effect=found)
            await run_burst(settings, after_job_end=clear_once_put_back)
    out = await result(redis, job_id)  # was: DiskFullError, the job failed for good
    assert out["status"] == "captured" and out["search_reused"] is True
    assert route.call_count == 1  # searched once, charged once
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10
    # Put back, the job's key lives another day; the memo outlives the hold's TTL
    # (the sweep looks for it after that).
    assert seen["job_ttl_ms"] > 23 * 3600 * 1000
    assert seen["memo_ttl_ms"] > settings.hold_ttl_seconds * 1000


async def test_the_sweep_keeps_the_hold_of_a_running_job_whose_arq_key_expired(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    # arq's job key expires a day after enqueue, whatever the job's retries; a job
    # held its tokens on its first try long ago and runs again as the day ends.
    await make_team(ledger)
    held_at = at("2026-01-02")
    settings = settings_for(database_url, redis_url, enrich_base_url=ENRICH)
    [job] = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=leads(1))
    sweeps: list[dict[str, Any]] = []

    async def search_as_the_key_expires(request: httpx.Request) -> httpx.Response:
        # The day is over: Redis drops the key (an expiry is a deletion).
        assert await redis.delete(job_key_prefix + job.job_id) == 1
        later = held_at + timedelta(hours=1)
        deps = {"settings": settings, "ledger": ledger, "clock": lambda: later}
        sweeps.append(await expire_holds({"deps": deps, "redis": redis}))
        return found(request)

    with respx.mock(base_url=ENRICH) as mock:
        mock.post("/v1/enrich").mock(side_effect=search_as_the_key_expires)
        await run_burst(settings, clock=lambda: held_at)
    assert sweeps == [{"expired": 0, "kept_for_their_jobs": 1, "captured_searched": 0}]
    out = await result(redis, job.job_id)
    assert out["status"] == "captured"  # was: 'released', the search not charged
    [charge] = await ledger.history("acme")
    assert charge.state == "captured"


async def test_the_sweep_captures_a_remembered_search_whose_job_arq_dropped(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    # Both jobs held long ago and arq no longer has them (expired in the queue, or
    # out of tries). One had searched, its capture unanswered: its search is
    # remembered, so its tokens are spent. The other never searched.
    await make_team(ledger)
    held_at = at("2026-01-02")
    for job in ("searched", "never_ran"):
        await ledger.hold("acme", "enrich", 1, key=job, at=held_at, job_id=job)
    memo = RedisSearchMemo(redis, ttl_seconds=3600)
    await memo.put("acme:searched", SearchResult(Outcome.FOUND, {}, "test", sandbox=True))
    deps = {"settings": settings_for(database_url, redis_url), "ledger": ledger,
            "clock": lambda: held_at + timedelta(hours=1)}  # fmt: skip
    out = await expire_holds({"deps": deps, "redis": redis})
    assert out == {"expired": 1, "kept_for_their_jobs": 0, "captured_searched": 1}
    assert [(c.idempotency_key, c.state) for c in await ledger.history("acme")] == [
        ("searched", "captured"),  # was: expired, a search that happened never charged
        ("never_ran", "expired"),
    ]


async def test_concurrent_workers_share_the_queue(
    ledger: Ledger, redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await make_team(ledger, limit=1000)
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
