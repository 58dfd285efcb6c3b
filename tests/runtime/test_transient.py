"""What counts as an outage, waiting one out, and a metered job that meets one."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest
import redis.exceptions as redis_errors

from ledger.errors import UnknownTeam
from ledger.results import HoldResult, Settlement
from ledger.service import Ledger
from runtime.config import Settings
from runtime.transient import is_contention, is_transient, ride_out
from tests.clock import at
from tests.factories import make_team
from worker.metering import OutageRetry, metered
from worker.providers import Outcome, SearchResult

NOW = at("2026-03-10T12:00:00")


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.CannotConnectNowError("the database system is not yet accepting connections"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CrashShutdownError("terminating connection because of crash of another process"),
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        FileNotFoundError(2, "No such file or directory"),  # the Unix socket, mid-restart
        TimeoutError(),
        redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
        redis_errors.BusyLoadingError("Valkey is loading the dataset in memory"),
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        redis_errors.TimeoutError("Timeout reading from socket"),
        redis_errors.WatchError("A ConnectionError occurred on while watching one or more keys"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_outages_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.UndefinedTableError('relation "charges" does not exist'),
        asyncpg.InvalidPasswordError("password authentication failed"),
        asyncpg.InterfaceError("pool is closing"),
        PermissionError(13, "Permission denied"),
        redis_errors.ResponseError("WRONGTYPE Operation against a key"),
        UnknownTeam("acme"),
        ValueError("bad input"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_refusals_and_bugs_are_not(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_an_outage_raised_as_the_cause_counts_but_not_one_merely_handled() -> None:
    outage = ConnectionRefusedError(111, "Connection refused")
    wrapped = RuntimeError("could not reach the ledger")
    wrapped.__cause__ = outage
    assert is_transient(wrapped)
    other = ValueError("a bug while handling the outage")
    other.__context__ = outage
    assert not is_transient(other)


async def test_ride_out_repeats_until_the_server_answers() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise asyncpg.CannotConnectNowError("the database system is starting up")
        return "ok"

    waited: list[BaseException] = []
    out = await ride_out(flaky, until=time.monotonic() + 10, what="test", on_wait=waited.append)
    assert out == "ok" and calls == 4 and len(waited) == 3


async def test_ride_out_gives_up_at_its_deadline_and_never_repeats_a_refusal() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError(111, "Connection refused")

    began = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await ride_out(down, until=began + 0.3, what="test")
    assert calls >= 2 and time.monotonic() - began < 1.0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise UnknownTeam("acme")

    calls = 0
    with pytest.raises(UnknownTeam):
        await ride_out(refused, until=time.monotonic() + 10, what="test")
    assert calls == 1


# -- a metered job against a Postgres that goes away -------------------------------


class Outage(Ledger):
    """The real ledger behind a switch: while `down`, every call is refused."""

    down_for: dict[str, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.down_for = {}

    def _gate(self, what: str) -> None:
        if self.down_for.get(what, 0) > 0:
            self.down_for[what] -= 1
            raise asyncpg.CannotConnectNowError("the database system is starting up")

    async def hold(self, *args: Any, **kwargs: Any) -> HoldResult:
        self._gate("hold")
        return await super().hold(*args, **kwargs)

    async def capture(self, charge_id: int, *, at: Any) -> Settlement:
        self._gate("capture")
        return await super().capture(charge_id, at=at)


class DictMemo:
    def __init__(self) -> None:
        self.saved: dict[str, SearchResult] = {}

    async def get(self, key: str) -> SearchResult | None:
        return self.saved.get(key)

    async def put(self, key: str, result: SearchResult) -> None:
        self.saved[key] = result


def _job(searches: list[int], **extra: Any) -> dict[str, Any]:
    async def search() -> SearchResult:
        searches.append(1)
        return SearchResult(Outcome.FOUND, {"email": "a@b.io"}, "test", sandbox=True)

    return dict(
        team="acme",
        action="enrich",
        job_id="j",
        job_try=1,
        max_tries=1,
        lead_id="l",
        clock=lambda: NOW,
        search=search,
        **extra,
    )


async def test_a_short_outage_is_waited_out_inside_the_job(ledger: Ledger) -> None:
    await make_team(ledger, anchor="2026-03-01", at=NOW)
    down = Outage(ledger.pool, ledger.catalog)
    down.down_for = {"hold": 3, "capture": 3}
    searches: list[int] = []
    out = await metered(down, **_job(searches, outage_until=time.monotonic() + 30, outage_wait=10))
    assert out["status"] == "captured" and len(searches) == 1
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10


async def test_a_long_outage_requeues_and_the_rerun_does_not_search_again(
    ledger: Ledger,
) -> None:
    await make_team(ledger, anchor="2026-03-01", at=NOW)
    down = Outage(ledger.pool, ledger.catalog)
    down.down_for = {"capture": 10_000}  # Postgres goes away right after the search
    searches: list[int] = []
    memo = DictMemo()
    with pytest.raises(OutageRetry) as raised:
        await metered(
            down, **_job(searches, outage_until=time.monotonic() + 0.3, outage_wait=0.3, memo=memo)
        )
    assert raised.value.what == "capture" and raised.value.defer_score is not None
    [charge] = await ledger.history("acme")
    assert charge.state == "held" and len(searches) == 1  # spent, not yet captured
    down.down_for = {}  # back
    out = await metered(down, **_job(searches, outage_until=time.monotonic() + 30, memo=memo))
    assert out["status"] == "captured" and out["data"] == {"email": "a@b.io"}
    assert out["search_reused"] is True
    assert len(searches) == 1  # the first run's answer, not a second search
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10


async def test_a_hold_that_never_reached_postgres_requeues_before_any_search(
    ledger: Ledger,
) -> None:
    await make_team(ledger, anchor="2026-03-01", at=NOW)
    down = Outage(ledger.pool, ledger.catalog)
    down.down_for = {"hold": 10_000}
    searches: list[int] = []
    with pytest.raises(OutageRetry):
        await metered(down, **_job(searches, outage_until=time.monotonic() + 0.2, outage_wait=1))
    assert searches == [] and await ledger.history("acme") == []


def test_outage_wait_is_a_setting() -> None:
    assert Settings().outage_wait_seconds == 30.0
    assert Settings(outage_wait_seconds=2.5).outage_wait_seconds == 2.5


# -- the sweep and the reconciler, from the worker's side --------------------------


class DownLedger:
    """A ledger whose Postgres never answers."""

    pool: Any = None
    calls = 0

    async def stale_holds(self, **_: Any) -> list[Any]:
        self.calls += 1
        raise ConnectionRefusedError(111, "Connection refused")

    async def expire_holds(self, **_: Any) -> list[Any]:
        self.calls += 1
        raise ConnectionRefusedError(111, "Connection refused")


def _ctx(ledger: Any, redis: Any = None) -> dict[str, Any]:
    deps = {
        "settings": Settings(outage_wait_seconds=0.2),
        "ledger": ledger,
        "clock": lambda: NOW,
        "sender": object(),
    }
    return {"deps": deps, "job_id": "reconcile:acme", "redis": redis}


async def test_the_sweep_waits_out_an_outage_then_leaves_it_to_its_next_run() -> None:
    from worker.tasks import expire_holds

    ledger = DownLedger()
    out = await expire_holds(_ctx(ledger))
    assert out == {"deferred": True, "reason": "database unreachable"}
    assert ledger.calls >= 2  # tried again before deferring


async def test_a_team_reconcile_goes_back_to_the_queue_without_using_a_try(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from arq.connections import RedisSettings, create_pool
    from arq.constants import retry_key_prefix

    import worker.tasks as tasks

    async def down(*_: Any, **__: Any) -> Any:
        raise asyncpg.CannotConnectNowError("the database system is starting up")

    monkeypatch.setattr(tasks, "reconcile", down)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        await redis.delete(retry_key_prefix + "reconcile:acme", "tokens:outage:reconcile:acme")
        await redis.set(retry_key_prefix + "reconcile:acme", 1)  # arq counted this run
        with pytest.raises(OutageRetry):
            await tasks.reconcile_team(_ctx(DownLedger(), redis), "acme")
        assert int(await redis.get(retry_key_prefix + "reconcile:acme")) == 0  # given back
        assert int(await redis.get("tokens:outage:reconcile:acme")) == 1
        # The periodic run (no team) does not requeue: its next run does the work.
        out = await tasks.reconcile_team(_ctx(DownLedger(), redis), None)
        assert out["deferred"] is True
    finally:
        await redis.delete(retry_key_prefix + "reconcile:acme", "tokens:outage:reconcile:acme")
        await redis.aclose()


async def test_the_worker_survives_a_watch_lost_to_a_redis_restart(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from arq.worker import Worker

    from worker.settings import TokensWorker, worker_kwargs

    w = TokensWorker(**worker_kwargs(Settings(), redis_url, burst=True))
    before = (w.job_counter, w.sem._value)

    async def lost_watch(self: Worker, job_ids: list[bytes]) -> None:
        await self.sem.acquire()  # what arq does before WATCH
        self.job_counter += 1
        raise redis_errors.WatchError(
            "A ConnectionError occurred on while watching one or more keys"
        )

    monkeypatch.setattr(Worker, "start_jobs", lost_watch)
    await w.start_jobs([b"job-1", b"job-2"])  # no error: the next poll tries again
    assert (w.job_counter, w.sem._value) == before  # the slot was given back

    async def bug(self: Worker, job_ids: list[bytes]) -> None:
        raise KeyError("a bug is not an outage")

    monkeypatch.setattr(Worker, "start_jobs", bug)
    with pytest.raises(KeyError):
        await w.start_jobs([b"job-1"])
    await w.close()


@pytest.mark.parametrize(
    ("exc", "contention"),
    [
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), True),
        (asyncpg.LockNotAvailableError("canceling statement due to lock timeout"), True),
        (asyncpg.DeadlockDetectedError("deadlock detected"), True),
        (asyncpg.SerializationError("could not serialize access"), True),
        (asyncpg.DiskFullError("could not extend file"), False),
        (ConnectionResetError(104, "Connection reset by peer"), False),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_statement_cancelled_by_other_sessions_is_contention_not_an_outage(
    exc: BaseException, contention: bool
) -> None:
    assert is_contention(exc) is contention
    assert not (contention and is_transient(exc))
