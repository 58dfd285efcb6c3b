"""Waiting out an outage inside a job, then putting the job back in the queue.

When Postgres (or Redis) is away (a restart, a failover), or other sessions'
locks cut a statement off, a ledger call is tried again with backoff inside
the job, up to a deadline below the job's timeout; past it the job goes back
to the queue (`OutageRetry`), which the worker does not count as one of the
job's tries (worker/tasks.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from arq.worker import Retry

from runtime.metrics import OUTAGES
from runtime.transient import is_contention, is_transient, ride_out

log = structlog.get_logger("tokens.worker")

T = TypeVar("T")


class OutageRetry(Retry):
    """Postgres or Redis is away, or a search's capture failed: run this job again later.

    Not a failure of the job nor one of its tries: the worker gives arq's try
    back (worker/tasks.py), so an outage never uses up TOKENS_JOB_MAX_TRIES,
    and a search whose capture failed is never left unrecorded by a job that
    ran out of tries.
    """

    def __init__(self, what: str, defer: float) -> None:
        super().__init__(defer=defer)
        self.what = what


def outage_defer_seconds(wait: float) -> float:
    """How long a job waits in the queue after an outage outlasted its in-job wait:
    a quarter of that wait (0.1-10 s), with jitter so that the jobs put back do
    not all come back at the same moment."""
    base = min(max(wait / 4, 0.1), 10.0)
    return base * random.uniform(0.75, 1.25)


def outage_or_contention(exc: BaseException) -> bool:
    return is_transient(exc) or is_contention(exc)


class Outage:
    """Ledger calls that wait out an outage until a deadline, then put the job back."""

    def __init__(self, until: float | None, wait: float) -> None:
        self.until = until
        self.wait = wait

    async def guard(self, call: Callable[[], Awaitable[T]], what: str, fields: dict[str, Any]) -> T:
        """`call` (a hold or a release), waiting out an outage, or a statement that
        other sessions' locks cut off (a bill locking the team's month): either
        would otherwise fail the job for good, its lead never searched."""
        try:
            return await call()  # nearly always: no deadline to work out, no wrapper
        except Exception as exc:
            if not outage_or_contention(exc):
                raise
            failed = exc
        return await self.wait_out(call, what, fields, failed, retry_on=outage_or_contention)

    async def by_deadline(self, call: Awaitable[T]) -> T:
        """`call`, given up (TimeoutError) at the deadline. A settlement given up
        on still commits or not with its batch (ledger/group_commit.py); the
        job's next run finds which."""
        if self.until is None:
            return await call
        async with asyncio.timeout(max(self.until - time.monotonic(), 0.0)):
            return await call

    async def wait_out(
        self,
        call: Callable[[], Awaitable[T]],
        what: str,
        fields: dict[str, Any],
        failed: Exception,
        retry_on: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        """`call` failed, Postgres (or Redis) being away, or with another error
        `retry_on` accepts: `call` again, with backoff, until the deadline; past
        it, or without one, put the job back (OutageRetry)."""
        try:
            if self.until is None:
                raise failed
            until = min(self.until, time.monotonic() + self.wait)
            return await ride_out(
                call,
                until=until,
                what=what,
                on_wait=lambda _: OUTAGES.labels(what, "waited").inc(),
                retry_on=retry_on,
                **fields,
            )
        except Exception as exc:
            if not retry_on(exc):
                raise
            defer = outage_defer_seconds(self.wait)
            OUTAGES.labels(what, "deferred").inc()
            log.warning(
                "outage_retry",
                what=what,
                error=f"{type(exc).__name__}: {exc}"[:200],
                retry_in_s=round(defer, 2),
                **fields,
            )
            raise OutageRetry(what, defer) from exc
