"""What the worker's money path saves per job: each saving keeps the behaviour."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import structlog
from arq.connections import ArqRedis, RedisSettings, create_pool
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

from db.pool import PooledConnection
from db.pool import create_pool as create_pg_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.logs import cached_logger
from ledger.service import Ledger
from runtime.logs import configure_logging
from runtime.metrics import Children
from tests.clock import at
from tests.factories import make_team
from worker.memo import _SHARED, PREFIX, RedisSearchMemo, shared_memo
from worker.providers import Outcome, SearchResult


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    await pool.flushdb()
    yield pool
    await pool.aclose()


def _result(n: int) -> SearchResult:
    return SearchResult(outcome=Outcome.FOUND, data={"n": n}, provider="sandbox", sandbox=True)


# -- the pool: no reset round trip, an open transaction still rolled back -----------


async def test_pooled_connections_skip_the_reset_query_but_not_the_rollback(
    database_url: str,
) -> None:
    pool = await create_pg_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert isinstance(conn._con, PooledConnection)  # type: ignore[attr-defined]
            assert conn._con.get_reset_query() == ""  # type: ignore[attr-defined]
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("BEGIN")  # left open: released like a crashed caller
            await conn.execute("CREATE TEMP TABLE left_open (n int) ON COMMIT DROP")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same session
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await pool.close()


# -- the search memo: one pipeline for the puts of one loop turn -------------------


async def test_memo_puts_of_one_turn_share_one_round_trip_and_are_readable_after(
    redis: ArqRedis,
) -> None:
    memo = RedisSearchMemo(redis, 60)
    await asyncio.gather(*(memo.put(f"acme:job{n}", _result(n)) for n in range(5)))
    assert (memo.flushes, memo.puts) == (1, 5)
    for n in range(5):
        got = await memo.get(f"acme:job{n}")
        assert got is not None and got.data == {"n": n}
        assert 0 < await redis.ttl(PREFIX + f"acme:job{n}") <= 60
    await memo.put("acme:later", _result(9))  # a later turn: its own round trip
    assert (memo.flushes, memo.puts) == (2, 6)


async def test_memo_put_is_best_effort_when_redis_is_away(redis_url: str) -> None:
    class Down:
        def pipeline(self, **_: Any) -> Any:
            raise ConnectionRefusedError(111, "Connection refused")

    memo = RedisSearchMemo(Down(), 60)
    with capture_logs() as logs:
        await asyncio.gather(memo.put("acme:a", _result(1)), memo.put("acme:b", _result(2)))
    assert [e["event"] for e in logs] == ["search_memo_unreachable"] * 2


async def test_memo_put_raises_what_is_not_an_outage() -> None:
    class Broken:
        def pipeline(self, **_: Any) -> Any:
            raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await RedisSearchMemo(Broken(), 60).put("acme:a", _result(1))


async def test_a_worker_shares_one_memo_per_redis(redis: ArqRedis) -> None:
    assert shared_memo(redis, 60) is shared_memo(redis, 60)
    assert shared_memo(redis, 120).ttl_seconds == 120  # the setting wins


# -- metrics and logs ------------------------------------------------------------


def test_children_are_the_labelled_children() -> None:
    counter = Counter("t_total", "test", ["action", "event"], registry=CollectorRegistry())
    children = Children(counter)
    children("enrich", "held").inc(3)
    assert children("enrich", "held") is counter.labels("enrich", "held")
    assert counter.labels("enrich", "held")._value.get() == 3


def test_cached_logger_follows_a_new_configuration() -> None:
    saved = structlog.get_config()
    log = cached_logger("tokens.test")
    try:
        # Whatever level an earlier test configured: this test logs at INFO.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
        with capture_logs() as first:
            log.info("one", n=1)
        with capture_logs() as second:
            log.info("two", n=2)
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
        with capture_logs() as third:
            log.info("filtered now")
    finally:
        structlog.configure(**saved)
    assert [e["event"] for e in first] == ["one"]
    assert [(e["event"], e["n"]) for e in second] == [("two", 2)]
    assert third == []


def test_json_log_lines_encode_what_json_dumps_did_and_more(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The production renderer (orjson) writes one JSON object per line, whatever the
    values: a datetime as ISO 8601, a Decimal through structlog's fallback (repr), an
    integer beyond 64 bits and a non-string key (both refused by orjson's defaults)."""
    saved = structlog.get_config()
    log = cached_logger("tokens.test")
    try:
        configure_logging("json", "INFO")
        log.info("capture", team="t1", tokens=3, at=datetime(2025, 1, 15, 12, tzinfo=UTC))
        log.info("odd", price=Decimal("0.01"), counts={1: 2})
        log.info("huge", n=2**70)
    finally:
        structlog.configure(**saved)
    lines = [json.loads(x) for x in capsys.readouterr().err.strip().splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("capture", "info"),
        ("odd", "info"),
        ("huge", "info"),
    ]
    assert lines[0]["at"] == "2025-01-15T12:00:00+00:00"
    assert (lines[0]["team"], lines[0]["tokens"]) == ("t1", 3)
    assert lines[1]["price"] == "Decimal('0.01')"
    assert lines[1]["counts"] == {"1": 2}
    assert lines[2]["n"] == 2**70
    assert lines[0]["timestamp"].endswith("Z")


# -- the worker's ledger: one batch at a time ------------------------------------


@pytest.mark.parametrize(
    ("in_flight", "min_batch", "batches"),
    [
        (1, 64, 2),  # the worker's: one batch at a time
        (None, 64, 2),  # the default: a second batch only for min_batch waiting items
        (2, 1, 3),  # a second batch for any item: the second hold goes alone
    ],
)
async def test_while_a_batch_commits_what_arrives_meanwhile_goes_together(
    pool: asyncpg.Pool, in_flight: int | None, min_batch: int, batches: int
) -> None:
    from ledger.group_commit import GroupCommit

    ledger = Ledger(pool, DEFAULT_CATALOG, batches_in_flight=in_flight)
    ledger.group = GroupCommit(pool, max_inflight=in_flight, min_batch=min_batch)
    await ledger.sync_catalog()
    for team in ("acme", "other"):
        await make_team(
            ledger, team, plan="sales_engagement", seats=10, anchor="2025-01-01",
            at="2025-01-01T00:00:01Z",
        )  # fmt: skip
    when = at("2025-01-02T00:00:00Z")

    def hold(n: int, team: str = "acme") -> asyncio.Future[Any]:
        return asyncio.ensure_future(ledger.hold(team, "debounce", 1, key=f"k{n}", at=when))

    first = [hold(0)]
    await asyncio.sleep(0)  # turn 1: the hold is queued
    await asyncio.sleep(0)  # turn 2: its batch of one is formed and on its way
    second = [hold(1, "other")]  # another team: only min_batch decides whether it waits
    await asyncio.sleep(0)  # queued, and formed into a batch or left waiting
    await asyncio.sleep(0)
    held = await asyncio.gather(*first, *second, *(hold(n) for n in range(2, 9)))
    assert all(h.state == "held" for h in held)
    assert (ledger.group.batches, ledger.group.items) == (batches, 9)


# -- the worker: the jobs one poll takes start together ------------------------------


async def _burst(worker: Any) -> None:
    try:
        await worker.main()
    finally:
        await worker.close()


def _tokens_worker(database_url: str, redis_url: str, **kwargs: Any) -> Any:
    from runtime.config import Settings
    from worker.settings import TokensWorker, worker_kwargs

    settings = Settings(
        database_url=database_url, redis_url=redis_url, retry_backoff_seconds=0.01, job_max_tries=3
    )
    return TokensWorker(**(worker_kwargs(settings, redis_url, burst=True) | kwargs))


@pytest.mark.parametrize(("jobs", "group"), [(6, 16), (10, 4)])
async def test_no_job_of_a_group_starts_before_the_group_is_taken(
    redis: ArqRedis, database_url: str, redis_url: str, jobs: int, group: int
) -> None:
    from arq.worker import func

    from worker.queue import QUEUE

    taken: list[str] = []
    taken_at_start: list[int] = []

    async def record(ctx: dict[str, Any]) -> str:
        taken_at_start.append(len(taken))  # jobs taken so far by this worker
        return str(ctx["job_id"])

    for n in range(jobs):
        await redis.enqueue_job("record", _job_id=f"j{n}", _queue_name=QUEUE)
    worker = _tokens_worker(
        database_url, redis_url, functions=[func(record, name="record")], cron_jobs=[]
    )
    worker.start_group = group
    run_job = worker.run_job

    def counting(job_id: str, score: int) -> Any:
        taken.append(job_id)  # arq builds a job's run_job when it has taken the job
        return run_job(job_id, score)

    worker.run_job = counting
    await _burst(worker)
    assert worker.jobs_complete == jobs and worker.jobs_failed == 0
    assert len(taken_at_start) == jobs
    # arq alone starts each job as soon as it is taken: the first would see 1 taken.
    assert min(taken_at_start) >= min(group, jobs)
    if group >= jobs:
        assert taken_at_start == [jobs] * jobs


async def test_a_group_larger_than_the_free_slots_never_stalls_the_worker(
    redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    """More jobs than job slots: the group stops at the last free slot and its gate
    opens, or the jobs holding the slots would wait on the gate for ever while the
    poll waits for a slot. (arq's semaphore has one spare permit, so its own check
    returns instead of blocking; this keeps that true through TokensWorker.)"""
    from arq.worker import func

    from worker.queue import QUEUE

    async def record(ctx: dict[str, Any]) -> str:
        return str(ctx["job_id"])

    for n in range(10):
        await redis.enqueue_job("record", _job_id=f"s{n}", _queue_name=QUEUE)
    worker = _tokens_worker(
        database_url, redis_url, functions=[func(record, name="record")], cron_jobs=[],
        max_jobs=3, queue_read_limit=10,
    )  # fmt: skip
    await asyncio.wait_for(_burst(worker), 30)
    assert worker.jobs_complete == 10 and worker.jobs_failed == 0


def test_arq_builds_a_repr_of_each_result_only_when_its_logger_prints_it() -> None:
    from runtime.config import Settings
    from worker.settings import worker_kwargs

    arq_log = logging.getLogger("arq.worker")
    level = arq_log.level
    try:
        arq_log.setLevel(logging.WARNING)  # as `tokens worker` runs: nothing set up for arq
        assert worker_kwargs(Settings(), "redis://localhost")["log_results"] is False
        arq_log.setLevel(logging.INFO)
        assert worker_kwargs(Settings(), "redis://localhost")["log_results"] is True
    finally:
        arq_log.setLevel(level)


def test_tokens_worker_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import common, jobs

    seen: list[dict[str, Any]] = []

    def recording(coro: Any, **kwargs: Any) -> None:
        seen.append(kwargs)
        coro.close()

    monkeypatch.setattr(jobs, "run", recording)
    config = structlog.get_config()
    try:
        jobs.worker(burst=True)  # sets up logging as the command does
    finally:
        structlog.configure(**config)
    assert seen == [{"uvloop": True}]

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert common.run(loop_module(), uvloop=True).startswith("uvloop")
    assert common.run(loop_module()).startswith("asyncio")


async def test_a_group_meets_only_once_taken_and_every_member_is_there() -> None:
    from worker.start_groups import StartGroup

    group = StartGroup()
    first, second, third = group.join(), group.join(), group.join()
    meeting = [asyncio.ensure_future(m.meet()) for m in (first, second)]
    third.arrived()  # ended before its start (expired, out of tries): not waited for
    await asyncio.sleep(0)  # one loop turn: both members have arrived and wait
    assert not group.met  # all there, but the group is still being taken
    group.close()
    assert group.met  # taken and all there: released at once, not by the wait's timer
    await asyncio.wait_for(asyncio.gather(*meeting), 5)


async def test_a_group_waits_for_a_member_still_reading_its_job() -> None:
    from worker.start_groups import StartGroup

    group = StartGroup()
    here, reading = group.join(), group.join()
    group.close()
    meeting = asyncio.ensure_future(here.meet())
    await asyncio.sleep(0)  # one loop turn: `here` has arrived and waits
    assert not group.met and not meeting.done()
    await asyncio.wait_for(reading.meet(), 5)  # the last to arrive releases the group
    assert group.met
    await asyncio.wait_for(meeting, 5)


async def test_a_member_that_never_arrives_keeps_the_others_at_most_the_meet_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import start_groups

    monkeypatch.setattr(start_groups, "MEET_WAIT_S", 0.05)
    group = start_groups.StartGroup()
    here, away = group.join(), group.join()
    group.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(here.meet(), 5)  # `away` is stuck reading its job (Redis away)
    assert loop.time() - started >= 0.05
    await asyncio.wait_for(away.meet(), 5)  # late, it goes at once


async def test_a_job_that_ends_before_its_start_does_not_hold_its_group(
    redis: ArqRedis, database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose function is unknown fails in arq before it starts: the rest of
    its group must not wait for it (the meet wait is set beyond the test's timeout)."""
    from arq.worker import func

    from worker import start_groups
    from worker.queue import QUEUE

    monkeypatch.setattr(start_groups, "MEET_WAIT_S", 3600.0)

    async def record(ctx: dict[str, Any]) -> str:
        return str(ctx["job_id"])

    for n in range(5):
        await redis.enqueue_job("record", _job_id=f"m{n}", _queue_name=QUEUE)
    await redis.enqueue_job("no_such_function", _job_id="m-unknown", _queue_name=QUEUE)
    worker = _tokens_worker(
        database_url, redis_url, functions=[func(record, name="record")], cron_jobs=[]
    )
    await asyncio.wait_for(_burst(worker), 30)
    assert (worker.jobs_complete, worker.jobs_failed) == (5, 1)


async def _enqueue_leads(redis: ArqRedis, n: int) -> list[str]:
    from worker.client import enqueue

    payload = {"leads": [{"id": f"l{i}", "email": f"p{i}@acme.io"} for i in range(n)]}
    jobs = await enqueue(redis, DEFAULT_CATALOG, "acme", "enrich", payload=payload, job_id="b")
    return [j.job_id for j in jobs]


def _count_searches(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    from worker.providers.sandbox import SandboxEnrichProvider

    searches: dict[str, int] = {}
    enrich = SandboxEnrichProvider.enrich

    async def counting(self: Any, lead: Any) -> SearchResult:
        searches[lead.id] = searches.get(lead.id, 0) + 1
        return await enrich(self, lead)

    monkeypatch.setattr(SandboxEnrichProvider, "enrich", counting)
    return searches


async def _charges(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT idempotency_key, state FROM charges ORDER BY idempotency_key")
    return [(r["idempotency_key"], r["state"]) for r in rows]


async def test_jobs_started_together_make_one_charge_each_in_shared_batches(
    ledger: Ledger,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.client import result

    n = 12
    await make_team(ledger, plan="sales_engagement", seats=10)
    searches = _count_searches(monkeypatch)
    job_ids = await _enqueue_leads(redis, n)
    worker = _tokens_worker(database_url, redis_url, cron_jobs=[])
    await _burst(worker)
    out = [await result(redis, j) for j in job_ids]
    assert [r["status"] for r in out] == ["captured"] * n
    assert searches == {f"l{i}": 1 for i in range(n)}
    keys = sorted(f"{j}:{j.rsplit(':', 1)[1]}" for j in job_ids)  # job id and lead
    assert await _charges(pool) == [(k, "captured") for k in keys]
    group = worker.ctx["deps"]["ledger"].group
    memo = _SHARED.get(worker.ctx["redis"])
    assert memo is not None and memo.flushes == 0  # every capture answered: no memo written
    assert group.items == 2 * n  # one hold and one capture per job
    # One group (start_group 16): its jobs meet before their functions start, so
    # their holds go in one tokens_apply and (the sandbox answering at once) their
    # captures in another. arq alone made 1 + 2-3 batches for the holds.
    assert group.batches == 2
    assert await ledger.drift() == []


async def test_a_capture_batch_whose_answer_is_lost_charges_once(
    ledger: Ledger,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first batch with captures commits, then its answer is lost on the wire:
    its captures are sent again (alone, or by the job's outage wait) and replay."""
    from ledger import group_commit
    from worker.client import result

    n = 8
    await make_team(ledger, plan="sales_engagement", seats=10)
    searches = _count_searches(monkeypatch)
    apply = group_commit.apply
    lost: list[int] = []

    async def losing(conn: Any, items: Any) -> Any:
        out = await apply(conn, items)
        if not lost and any(isinstance(i, group_commit.SettleItem) for i in items):
            lost.append(len(items))
            raise ConnectionResetError(104, "Connection reset by peer")
        return out

    monkeypatch.setattr(group_commit, "apply", losing)
    job_ids = await _enqueue_leads(redis, n)
    await _burst(_tokens_worker(database_url, redis_url, cron_jobs=[]))
    assert lost  # the failure happened
    out = [await result(redis, j) for j in job_ids]
    assert [r["status"] for r in out] == ["captured"] * n
    assert searches == {f"l{i}": 1 for i in range(n)}
    assert [s for _, s in await _charges(pool)] == ["captured"] * n
    assert await ledger.drift() == []


@pytest.mark.parametrize("committed", [False, True])
async def test_a_job_stopped_at_its_capture_runs_again_without_a_second_search_or_charge(
    ledger: Ledger,
    pool: asyncpg.Pool,
    redis: ArqRedis,
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    committed: bool,
) -> None:
    """Each job is cancelled (a worker stopping) at its first capture, before it was
    sent or after it committed: arq runs it again; the memo gives back the search
    or the hold replays as captured. One search and one charge per lead either way."""
    from worker.client import result

    n = 6
    await make_team(ledger, plan="sales_engagement", seats=10)
    searches = _count_searches(monkeypatch)
    capture = Ledger.capture
    stopped: set[int] = set()

    async def stopping(self: Ledger, charge_id: int, *, at: Any) -> Any:
        if charge_id in stopped:
            return await capture(self, charge_id, at=at)
        stopped.add(charge_id)
        if committed:
            await capture(self, charge_id, at=at)
        raise asyncio.CancelledError

    monkeypatch.setattr(Ledger, "capture", stopping)
    job_ids = await _enqueue_leads(redis, n)
    worker = _tokens_worker(database_url, redis_url, cron_jobs=[])
    await _burst(worker)
    assert worker.jobs_retried == n and len(stopped) == n
    out = [await result(redis, j) for j in job_ids]
    if committed:
        assert [r["status"] for r in out] == ["already_charged"] * n
    else:
        assert [(r["status"], r["search_reused"]) for r in out] == [("captured", True)] * n
    assert searches == {f"l{i}": 1 for i in range(n)}
    assert [s for _, s in await _charges(pool)] == ["captured"] * n
    assert await ledger.drift() == []
