"""The arq worker's settings, built from our Settings (no import-time globals)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.exceptions as redis_errors
import structlog
from arq.connections import RedisSettings

from billing.sender import sender_from_settings
from db.pool import create_pool
from runtime.config import Settings
from runtime.embedded.supervise import supervise
from runtime.transient import ride_out
from wiring.pools import catalog, ensure_schema
from wiring.servers import database_url
from worker.alerts import deliver_alerts
from worker.arq_shim import TokensWorker, cron_job, job, pooled_connections
from worker.context import Deps
from worker.providers import build_providers
from worker.queue import QUEUE, RECONCILE_JOB
from worker.tasks import JOBS, expire_holds, reconcile_all, reconcile_team

__all__ = ["TokensWorker", "ride_out_redis", "worker_kwargs"]

log = structlog.get_logger("tokens.worker")


def _every(seconds: int) -> dict[str, Any]:
    """arq cron fields for 'every N seconds' (rounded to what a clock face allows)."""
    if seconds < 60:
        return {"second": set(range(0, 60, max(seconds, 1)))}
    minutes = max(seconds // 60, 1)
    return {"minute": set(range(0, 60, minutes)) if minutes < 60 else {0}, "second": 0}


def utc_now() -> datetime:
    return datetime.now(UTC)


# The worker's Redis connection waits out a Redis restart or failover this long
# (every command retried with backoff) before the worker gives up and exits.
REDIS_OUTAGE_S = 300.0


def ride_out_redis(redis: Any, outage_s: float = REDIS_OUTAGE_S) -> None:
    """Make the worker's Redis connections wait out a Redis restart or failover.

    Without this a refused connection in arq's poll loop ends the worker, and a
    job's result written while Redis restarts is lost. Every command (and
    pipeline) is retried with backoff, for about `outage_s`, on a dropped or
    refused connection, a timeout, LOADING (the append-only file being read
    back) and READONLY (a replica, just after a failover).

    Installed once the worker has connected (on_startup), so that a wrong Redis
    URL still fails the start within seconds instead of being waited out.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    errors: list[type[Exception]] = [
        redis_errors.ConnectionError,
        redis_errors.TimeoutError,
        redis_errors.BusyLoadingError,
        redis_errors.ReadOnlyError,
        # A refused connect surfaces as OSError inside the retry (redis-py wraps it
        # in ConnectionError only afterwards): without it a reconnect is not retried.
        OSError,
    ]
    cap = 1.0
    retry = Retry(
        ExponentialBackoff(cap=cap, base=0.05),
        retries=int(outage_s / cap) + 5,
        supported_errors=tuple(errors),  # type: ignore[arg-type]
    )
    redis.connection_pool.connection_kwargs.update(
        retry=retry, retry_on_error=errors, retry_on_timeout=True
    )
    for conn in pooled_connections(redis):
        conn.retry = retry
        conn.retry_on_error = errors
        conn.retry_on_timeout = True


def worker_kwargs(
    settings: Settings,
    redis_url: str,
    *,
    burst: bool = False,
    clock: Callable[[], datetime] = utc_now,
) -> dict[str, Any]:
    """Keyword arguments for `arq.worker.Worker`: a typo here is a TypeError there.

    `clock` is the ledger's clock for the jobs (the demo simulates a month).
    """

    async def on_startup(ctx: dict[str, Any]) -> None:
        from ledger.service import Ledger

        # A worker started while Postgres restarts waits for it (bounded), then fails.
        wait = settings.outage_wait_seconds
        pool = await ride_out(
            lambda: create_pool(
                database_url(settings),
                max_size=settings.worker_concurrency,
                acquire_timeout=settings.db_acquire_timeout_seconds,
                statement_timeout=settings.db_statement_timeout_seconds,
            ),
            until=time.monotonic() + wait,
            what="worker_start",
        )
        try:
            await ensure_schema(pool, settings)
            # One batch committing at a time: the jobs' holds and captures wait for
            # it together, fewer round trips per job (bench/arq_overhead.py).
            ledger = Ledger(pool, catalog(settings), batches_in_flight=1)
            await ledger.sync_catalog()
        except BaseException:
            # A worker that cannot start must not leave a pool behind, retrying its
            # connections in the background while the process reports the error.
            await pool.close()
            raise
        http = httpx.AsyncClient(timeout=settings.provider_timeout_seconds)
        deps: Deps = {
            "settings": settings,
            "ledger": ledger,
            "providers": build_providers(settings, http, redis=ctx["redis"]),
            "http": http,
            "clock": clock,
            "sender": sender_from_settings(pool, settings, clock),
        }
        ctx["deps"] = deps
        ride_out_redis(ctx["redis"])
        if not burst:
            # Embedded servers that die while the worker runs come back (the
            # worker's connections wait for them at the same address).
            ctx["supervisor"] = asyncio.create_task(supervise(settings))

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        supervisor: asyncio.Task[None] | None = ctx.get("supervisor")
        if supervisor is not None:
            supervisor.cancel()
        deps: Deps | None = ctx.get("deps")
        if deps is not None:
            await deps["http"].aclose()
            await deps["ledger"].pool.close()

    every = _every(settings.reconcile_interval_seconds)
    alert_every = _every(settings.alert_interval_seconds)
    return {
        "functions": [
            *(job(f) for f in JOBS),
            job(reconcile_team, name=RECONCILE_JOB, keep_result=0, max_tries=3),
        ],
        "cron_jobs": [
            cron_job(reconcile_all, name="reconcile_all", run_at_startup=not burst, **every),
            cron_job(expire_holds, name="expire_holds", run_at_startup=not burst, **every),
            cron_job(deliver_alerts, name="deliver_alerts", **alert_every),
        ],
        "queue_name": QUEUE,
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "max_jobs": settings.worker_concurrency,
        "job_timeout": settings.job_timeout_seconds,
        "max_tries": settings.job_max_tries,
        "keep_result": 24 * 3600,
        # arq builds repr(result) for its "job finished" line whether or not its
        # logger prints INFO (it prints nothing unless logging is set up for it).
        "log_results": logging.getLogger("arq.worker").isEnabledFor(logging.INFO),
        "burst": burst,
        "poll_delay": 0.05 if burst else 0.5,
        # SIGTERM: stop taking jobs, let running ones finish (they hold tokens),
        # then cancel what is left; a cancelled job keeps its hold and runs again.
        "job_completion_wait": int(settings.provider_timeout_seconds) + 5,
        "handle_signals": not burst,
    }
