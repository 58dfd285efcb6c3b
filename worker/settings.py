"""The arq worker's settings, built from our Settings (no import-time globals)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from arq.connections import RedisSettings
from arq.cron import cron
from arq.worker import func

from billing.sender import StripeSender
from billing.stripe_client import make_stripe_client
from runtime.app import catalog, database_url, ensure_schema
from runtime.config import Settings
from runtime.db import create_pool
from worker.alerts import deliver_alerts
from worker.context import Deps
from worker.providers import build_providers
from worker.tasks import (
    JOBS,
    QUEUE,
    RECONCILE_JOB,
    expire_holds,
    reconcile_all,
    reconcile_team,
)


def _every(seconds: int) -> dict[str, Any]:
    """arq cron fields for 'every N seconds' (rounded to what a clock face allows)."""
    if seconds < 60:
        return {"second": set(range(0, 60, max(seconds, 1)))}
    minutes = max(seconds // 60, 1)
    return {"minute": set(range(0, 60, minutes)) if minutes < 60 else {0}, "second": 0}


def utc_now() -> datetime:
    return datetime.now(UTC)


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

        pool = await create_pool(database_url(settings), max_size=settings.worker_concurrency)
        try:
            await ensure_schema(pool, settings)
            ledger = Ledger(pool, catalog(settings))
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
            "providers": build_providers(settings, http),
            "http": http,
            "clock": clock,
            "sender": StripeSender(pool, make_stripe_client(settings), clock),
        }
        ctx["deps"] = deps

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        deps: Deps | None = ctx.get("deps")
        if deps is not None:
            await deps["http"].aclose()
            await deps["ledger"].pool.close()

    every = _every(settings.reconcile_interval_seconds)
    alert_every = _every(settings.alert_interval_seconds)
    return {
        "functions": [
            *(func(f, name=f.__name__) for f in JOBS),
            func(reconcile_team, name=RECONCILE_JOB, keep_result=0, max_tries=3),
        ],
        "cron_jobs": [
            cron(reconcile_all, name="reconcile_all", run_at_startup=not burst, **every),
            cron(expire_holds, name="expire_holds", run_at_startup=not burst, **every),
            cron(deliver_alerts, name="deliver_alerts", **alert_every),
        ],
        "queue_name": QUEUE,
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "max_jobs": settings.worker_concurrency,
        "job_timeout": settings.job_timeout_seconds,
        "max_tries": settings.job_max_tries,
        "keep_result": 24 * 3600,
        "burst": burst,
        "poll_delay": 0.05 if burst else 0.5,
        # SIGTERM: stop taking jobs, let running ones finish (they hold tokens),
        # then cancel what is left; a cancelled job keeps its hold and runs again.
        "job_completion_wait": int(settings.provider_timeout_seconds) + 5,
        "handle_signals": not burst,
    }
