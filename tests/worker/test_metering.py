"""The metered search when Postgres fails at the worst moment, and the hold TTL rule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Retry
from pydantic import ValidationError

from ledger.catalog import DEFAULT_CATALOG
from ledger.results import Settlement
from ledger.service import Ledger
from runtime.config import Settings
from tests.clock import at
from tests.factories import make_team
from tests.faults import MonthLock, capture_fault
from worker.memo import CALL_TIMEOUT_S, RedisSearchMemo
from worker.metering import OutageRetry, metered
from worker.providers import Outcome, ProviderFailure, SearchResult

NOW = at("2026-03-10T12:00:00")


class CaptureFailsOnce(Ledger):
    """The real ledger, whose first capture meets a dropped connection."""

    failed = False

    async def capture(self, charge_id: int, *, at: object) -> Settlement:  # type: ignore[override]
        if not self.failed:
            self.failed = True
            raise ConnectionResetError("connection to Postgres lost")
        return await super().capture(charge_id, at=at)  # type: ignore[arg-type]


async def test_capture_lost_after_search_retries_and_charges_once(ledger: Ledger) -> None:
    await make_team(ledger, "acme", anchor="2026-03-01", at=NOW)
    flaky = CaptureFailsOnce(ledger.pool, ledger.catalog)
    searches = 0

    async def search() -> SearchResult:
        nonlocal searches
        searches += 1
        return SearchResult(Outcome.FOUND, {}, "test", sandbox=True)

    args = dict(
        team="acme",
        action="enrich",
        job_id="j",
        max_tries=3,
        lead_id="l",
        clock=lambda: NOW,
        search=search,
    )
    with pytest.raises(Retry):
        await metered(flaky, job_try=1, **args)  # type: ignore[arg-type]
    [charge] = await ledger.history("acme")
    assert charge.state == "held"  # not failed, not released: the job runs again
    out = await metered(flaky, job_try=2, **args)  # type: ignore[arg-type]
    assert out["status"] == "captured" and searches == 2
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10


async def test_a_release_after_another_run_captured_answers_already_charged(
    ledger: Ledger,
) -> None:
    # arq ran the job twice at once (its first worker died): run A searched and
    # captured while run B, on its last try, met a 503 and went to release.
    await make_team(ledger, "acme", anchor="2026-03-01", at=NOW)
    b_searching, a_done = asyncio.Event(), asyncio.Event()

    async def found() -> SearchResult:
        await b_searching.wait()
        return SearchResult(Outcome.FOUND, {}, "test", sandbox=True)

    async def down() -> SearchResult:
        b_searching.set()
        await a_done.wait()
        raise ProviderFailure("test", "503", retryable=True)

    args = dict(team="acme", action="enrich", job_id="j", max_tries=3, lead_id="l",
                clock=lambda: NOW)  # fmt: skip
    b = asyncio.create_task(metered(ledger, job_try=3, search=down, **args))  # type: ignore[arg-type]
    a = await metered(ledger, job_try=2, search=found, **args)  # type: ignore[arg-type]
    a_done.set()
    assert a["status"] == "captured"
    assert (await b)["status"] == "already_charged"  # was: ChargeAlreadySettled raised
    [charge] = await ledger.history("acme")
    assert charge.state == "captured"


def test_a_provider_call_must_fit_in_half_a_job() -> None:
    # arq's timeout fails a job for good (not a retry) and leaves its hold behind.
    with pytest.raises(ValidationError, match="TOKENS_PROVIDER_TIMEOUT_SECONDS"):
        Settings(job_timeout_seconds=10, provider_timeout_seconds=20)
    with pytest.raises(ValidationError, match="at most half"):
        Settings(job_timeout_seconds=30, provider_timeout_seconds=16)
    assert Settings(job_timeout_seconds=30, provider_timeout_seconds=15).job_timeout_seconds == 30


def test_hold_ttl_must_outlive_every_try_of_a_job() -> None:
    Settings()  # the defaults are consistent
    with pytest.raises(ValidationError, match="TOKENS_HOLD_TTL_SECONDS"):
        Settings(hold_ttl_seconds=600, job_timeout_seconds=120, job_max_tries=5)


# -- a capture that Postgres refuses once the search happened ---------------------


class CaptureErrors(Ledger):
    """The real ledger, noting each error its captures met."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.errors: list[BaseException] = []

    async def capture(self, charge_id: int, *, at: Any) -> Settlement:
        try:
            return await super().capture(charge_id, at=at)
        except Exception as exc:
            self.errors.append(exc)
            raise


def _job(search: Any, **extra: Any) -> dict[str, Any]:
    return dict(team="acme", action="enrich", job_id="j", max_tries=3, lead_id="l",
                clock=lambda: NOW, search=search, **extra)  # fmt: skip


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    await pool.flushdb()
    yield pool
    await pool.aclose()


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("statement_timeout", asyncpg.QueryCanceledError),
        ("lock_timeout", asyncpg.LockNotAvailableError),
    ],
)
async def test_a_capture_cut_off_while_a_bill_locks_the_month_is_retried(
    ledger: Ledger, database_url: str, setting: str, error: type[Exception]
) -> None:
    # Bill-making holds the team's month row for a second; the worker's sessions
    # give up on a statement after 300 ms.
    await make_team(ledger, "acme", anchor="2026-03-01", at=NOW)
    short = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={setting: "300", "timezone": "UTC"}
    )
    lock = MonthLock(ledger.pool, "acme")
    timed = CaptureErrors(short, DEFAULT_CATALOG)

    async def search() -> SearchResult:
        await lock.take()
        lock.later(lambda: asyncio.sleep(1.0), lock.commit)
        return SearchResult(Outcome.FOUND, {}, "test", sandbox=True)

    try:
        out = await metered(
            timed, job_try=3, **_job(search, outage_until=time.monotonic() + 20, outage_wait=10)
        )
    finally:
        await lock.close()
        await short.close()
    assert out["status"] == "captured"  # was: the timeout raised, the job failed for good
    assert timed.errors and all(isinstance(e, error) for e in timed.errors)
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10


async def test_a_capture_that_deadlocks_with_bill_making_is_retried(ledger: Ledger) -> None:
    await make_team(ledger, "acme", anchor="2026-03-01", at=NOW)
    # The capture's session checks for the deadlock (MonthLock's never does first); it
    # waits long enough for the bill's session to close the cycle on a busy machine.
    db = await ledger.pool.fetchval("SELECT current_database()")
    await ledger.pool.execute(f"ALTER DATABASE \"{db}\" SET deadlock_timeout = '5s'")
    await ledger.pool.expire_connections()
    lock = MonthLock(ledger.pool, "acme")
    spy = CaptureErrors(ledger.pool, DEFAULT_CATALOG)

    async def search() -> SearchResult:
        [held] = await ledger.history("acme")
        await lock.take()
        # Once the capture holds the charge and waits for the month, the bill wants
        # the charge too: a cycle, which Postgres breaks by cancelling the capture.
        lock.later(lock.wait_for_a_waiter, lambda: lock.lock_charge(held.id), lock.commit)
        return SearchResult(Outcome.FOUND, {}, "test", sandbox=True)

    try:
        out = await metered(
            spy, job_try=1, **_job(search, outage_until=time.monotonic() + 20, outage_wait=10)
        )
    finally:
        await lock.close()
    assert out["status"] == "captured"
    # Cancelled once, or again when its retry met the bill's session still closing
    # the cycle: each time a deadlock, never a lost search.
    assert spy.errors and {type(e) for e in spy.errors} == {asyncpg.DeadlockDetectedError}
    [charge] = await ledger.history("acme")
    assert charge.state == "captured"


async def test_a_capture_failing_on_the_last_try_goes_back_and_is_captured_once(
    ledger: Ledger, redis: ArqRedis
) -> None:
    # Not an outage, not a lock: Postgres refuses the capture (a full disk) past
    # the job's wait, on its last try. The job goes back to the queue with its
    # search remembered, and the next run captures it without searching again.
    await make_team(ledger, "acme", anchor="2026-03-01", at=NOW)
    memo = RedisSearchMemo(redis, ttl_seconds=900)
    searches: list[int] = []

    async def search() -> SearchResult:
        searches.append(1)
        return SearchResult(Outcome.FOUND, {"email": "a@b.io"}, "test", sandbox=True)

    async with capture_fault(ledger.pool, "53100"):
        with pytest.raises(OutageRetry) as raised:  # was: DiskFullError, the job failed
            await metered(ledger, job_try=3, **_job(search, memo=memo,
                          outage_until=time.monotonic() + 0.5, outage_wait=0.3))  # fmt: skip
        assert raised.value.what == "capture"
        [charge] = await ledger.history("acme")
        assert charge.state == "held"
    out = await metered(ledger, job_try=3, **_job(search, memo=memo,
                        outage_until=time.monotonic() + 20, outage_wait=10))  # fmt: skip
    assert out["status"] == "captured" and out["search_reused"] is True
    assert out["data"] == {"email": "a@b.io"} and len(searches) == 1
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10


async def test_a_rerun_that_could_not_read_the_memo_never_releases_an_earlier_search(
    ledger: Ledger, redis: ArqRedis
) -> None:
    # Run 1 searched and its capture failed: the search is remembered. Run 2 cannot
    # read the memo (Redis stalls past the read's timeout), searches again, and the
    # provider now refuses the lead: run 1's search happened, so the hold is
    # captured with its answer, not released.
    await make_team(ledger, "acme", anchor="2026-03-01", at=NOW)
    memo = RedisSearchMemo(redis, ttl_seconds=900)
    answers: list[SearchResult | ProviderFailure] = [
        SearchResult(Outcome.FOUND, {"email": "a@b.io"}, "test", sandbox=True),
        ProviderFailure("test", "400 lead refused", retryable=False),
    ]

    async def search() -> SearchResult:
        answer = answers.pop(0)
        if isinstance(answer, ProviderFailure):
            raise answer
        return answer

    async with capture_fault(ledger.pool, "53100"):
        with pytest.raises(OutageRetry):
            await metered(ledger, job_try=1, **_job(search, memo=memo,
                          outage_until=time.monotonic() + 0.3, outage_wait=0.2))  # fmt: skip
    stall_ms = int((CALL_TIMEOUT_S + 0.5) * 1000)
    await redis.execute_command("CLIENT", "PAUSE", stall_ms, "ALL")
    out = await metered(ledger, job_try=2, **_job(search, memo=memo,
                        outage_until=time.monotonic() + 20, outage_wait=10))  # fmt: skip
    assert answers == []  # searched again: the first read of the memo timed out
    assert out["status"] == "captured" and out["search_reused"] is True  # was: 'failed'
    assert out["data"] == {"email": "a@b.io"}
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10  # was: released


async def test_a_hold_cut_off_while_a_bill_locks_the_month_is_retried(
    ledger: Ledger, database_url: str
) -> None:
    # Nothing searched yet, so nothing to lose; but a job failed for good would
    # never search its lead.
    await make_team(ledger, "acme", anchor="2026-03-01", at=NOW)
    await ledger.billing("acme", at=NOW)  # the month exists: the bill locks it
    short = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2,
        server_settings={"statement_timeout": "300", "timezone": "UTC"},
    )  # fmt: skip
    lock = MonthLock(ledger.pool, "acme")
    await lock.take()
    lock.later(lambda: asyncio.sleep(1.0), lock.commit)
    timed = Ledger(short, DEFAULT_CATALOG)

    async def search() -> SearchResult:
        return SearchResult(Outcome.FOUND, {}, "test", sandbox=True)

    try:
        out = await metered(
            timed, job_try=1, **_job(search, outage_until=time.monotonic() + 20, outage_wait=10)
        )
    finally:
        await lock.close()
        await short.close()
    assert out["status"] == "captured"  # was: QueryCanceledError, the job failed for good
    [charge] = await ledger.history("acme")
    assert charge.state == "captured"
