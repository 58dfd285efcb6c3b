"""The search memo in Redis: a job's search that happened, kept until its capture.

A job that searched and then could not capture (Postgres away past the job's
wait, the worker killed between the two) runs again; its hold replays as
`held` and the memo gives back what the provider answered, so the lead is not
searched twice. Best effort by design: Redis unreachable means no memo (the
job then searches again, and is still charged once by its idempotency key).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from runtime.transient import is_transient
from worker.providers import Outcome, SearchResult

log = structlog.get_logger("tokens.worker")

PREFIX = "tokens:searched:"
# Redis calls of a running job are bounded: the worker's connection waits out a
# Redis restart for minutes, a job must not (arq's job timeout would fail it).
CALL_TIMEOUT_S = 2.0


class RedisSearchMemo:
    def __init__(self, redis: Any, ttl_seconds: int) -> None:
        self.redis = redis
        # A hold older than the hold TTL is released by the sweep: no memo outlives it.
        self.ttl_seconds = ttl_seconds

    async def get(self, key: str) -> SearchResult | None:
        try:
            raw = await asyncio.wait_for(self.redis.get(PREFIX + key), CALL_TIMEOUT_S)
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
        try:
            await asyncio.wait_for(
                self.redis.set(PREFIX + key, body, ex=self.ttl_seconds), CALL_TIMEOUT_S
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("search_memo_unreachable", key=key, error=type(exc).__name__)
