"""The search memo in Redis: a search that happened, whose capture did not answer.

A job that searched and then could not capture (Postgres away or refusing
the capture past the job's wait, the worker stopped or its capture's answer
lost) writes the memo before it gives up, and runs again; its hold replays as
`held` and the memo gives back what the provider answered, so the lead is not
searched twice. If arq never runs the job again (it expired in the queue),
the hold-expiry sweep finds the memo and captures the hold instead of
expiring it (worker/tasks.py). A capture that answers writes nothing
(worker/metering.py). Best effort by design: Redis unreachable, or a worker
killed outright between the search and the capture's commit, means no memo
(the job then searches again, and is still charged once by its idempotency
key).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

import structlog

from runtime.config import Settings
from runtime.transient import is_transient
from worker.providers import Outcome, SearchResult

log = structlog.get_logger("tokens.worker")

PREFIX = "tokens:searched:"
# Redis calls of a running job are bounded: the worker's connection waits out a
# Redis restart for minutes, a job must not (arq's job timeout would fail it).
CALL_TIMEOUT_S = 2.0
# arq keeps a queued job's key this long (its `expires_extra_ms`), and the worker
# renews it so when a job goes back to the queue (worker/tasks.py).
JOB_KEY_TTL_S = 24 * 3600


def memo_ttl_seconds(settings: Settings) -> int:
    """How long a memo is kept: until the job's next run, which arq may hold back
    as long as a job's key lives, and past the hold TTL, when the sweep looks for
    it. Memos are few (only captures that did not answer) and small."""
    return settings.hold_ttl_seconds + JOB_KEY_TTL_S


def memo_key(team: str, key: str) -> str:
    """The memo of a charge: its team and idempotency key."""
    return f"{PREFIX}{team}:{key}"


class RedisSearchMemo:
    """One per worker (`shared_memo`): the puts of the jobs that reach them in
    the same turn of the event loop go to Redis in one pipeline, one round trip.

    Each job still waits for its own put before it goes on, as with one SET
    each: batching changes the round trips, not what is remembered when.
    """

    def __init__(self, redis: Any, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds
        self._pending: list[tuple[str, str, asyncio.Future[None]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        # Round trips and puts, for tests and benchmarks.
        self.flushes = 0
        self.puts = 0

    async def get(self, key: str) -> SearchResult | None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                raw = await self.redis.get(PREFIX + key)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("search_memo_unreachable", key=key, error=type(exc).__name__)
            return None
        if raw is None:
            return None
        data = json.loads(raw)
        return SearchResult(
            outcome=Outcome(data["outcome"]),
            data=data["data"],
            provider=data["provider"],
            sandbox=bool(data["sandbox"]),
        )

    async def put(self, key: str, result: SearchResult) -> None:
        body = json.dumps(
            {
                "outcome": str(result.outcome),
                "data": result.data,
                "provider": result.provider,
                "sandbox": result.sandbox,
            },
            default=str,
        )
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((PREFIX + key, body, done))
        if len(self._pending) == 1:
            # Starts on the loop's next turn: every put of this turn goes with it.
            task = loop.create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await done
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("search_memo_unreachable", key=key, error=type(exc).__name__)

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self.flushes += 1
        self.puts += len(batch)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key, body, _ in batch:
                        pipe.set(key, body, ex=self.ttl_seconds)
                    await pipe.execute()
        except BaseException as exc:
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception) else TimeoutError())
            if not isinstance(exc, Exception):
                raise
        else:
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)


async def remembered(redis: Any, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (team, idempotency key) have a memo: one round trip. Not best
    effort: the sweep must not decide without knowing, so errors are raised."""
    if not keys:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for team, key in keys:
            pipe.exists(memo_key(team, key))
        found = await pipe.execute()
    return {k for k, n in zip(keys, found, strict=True) if n}


_SHARED: weakref.WeakKeyDictionary[Any, RedisSearchMemo] = weakref.WeakKeyDictionary()


def shared_memo(redis: Any, ttl_seconds: int) -> RedisSearchMemo:
    """The worker's one memo on this Redis connection pool (built on first use)."""
    memo = _SHARED.get(redis)
    if memo is None or memo.ttl_seconds != ttl_seconds:
        memo = _SHARED[redis] = RedisSearchMemo(redis, ttl_seconds)
    return memo
