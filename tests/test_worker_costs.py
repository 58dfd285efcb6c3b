"""What the worker's money path saves per job (issue 15): each saving keeps the behaviour."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
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
from runtime.metrics import Children
from worker.memo import PREFIX, RedisSearchMemo, shared_memo
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
    from tests.conftest import at

    ledger = Ledger(pool, DEFAULT_CATALOG, batches_in_flight=in_flight)
    ledger.group = GroupCommit(pool, max_inflight=in_flight, min_batch=min_batch)
    await ledger.sync_catalog()
    for team in ("acme", "other"):
        await ledger.set_team(
            team,
            plan="sales_engagement",
            seats=10,
            interval="month",
            anchor=at("2025-01-01T00:00:00Z"),
            at=at("2025-01-01T00:00:01Z"),
        )
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
