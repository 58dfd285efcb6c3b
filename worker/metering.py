"""One metered search: hold, search, then capture or release.

"Charged on search, not on success": once the provider has performed the
search the tokens are spent, whatever it found. They come back only when the
search never happened: a provider that could not be reached or failed on
every try, or a request it refused. A cancelled job keeps its hold: arq runs
it again and the same key finds the same hold; if it never runs again the
hold-expiry sweep releases it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from arq.worker import Retry

from ledger.results import Settlement
from ledger.service import Ledger
from runtime.metrics import JOBS, TOKENS
from worker.providers import ProviderFailure, SearchResult

log = structlog.get_logger("tokens.worker")

Search = Callable[[], Awaitable[SearchResult]]
OnThreshold = Callable[[Settlement], Awaitable[None]]


def charge_key(job_id: str, lead_id: str | None) -> str:
    """The idempotency key of a job's charge: the job id and the lead."""
    return f"{job_id}:{lead_id}" if lead_id else job_id


def backoff_seconds(job_try: int, base: float = 5.0) -> float:
    """base, 2 x base, 4 x base, ... capped at 5 minutes."""
    return float(min(base * 2 ** (job_try - 1), 300.0))


async def metered(
    ledger: Ledger,
    *,
    team: str,
    action: str,
    job_id: str,
    job_try: int,
    max_tries: int,
    lead_id: str | None,
    clock: Callable[[], datetime],
    search: Search,
    on_threshold: OnThreshold | None = None,
    backoff_base: float = 5.0,
) -> dict[str, Any]:
    out = await _metered(
        ledger,
        team=team,
        action=action,
        job_id=job_id,
        job_try=job_try,
        max_tries=max_tries,
        lead_id=lead_id,
        clock=clock,
        search=search,
        on_threshold=on_threshold,
        backoff_base=backoff_base,
    )
    JOBS.labels(action, out["status"]).inc()
    return out


async def _metered(
    ledger: Ledger,
    *,
    team: str,
    action: str,
    job_id: str,
    job_try: int,
    max_tries: int,
    lead_id: str | None,
    clock: Callable[[], datetime],
    search: Search,
    on_threshold: OnThreshold | None,
    backoff_base: float,
) -> dict[str, Any]:
    key = charge_key(job_id, lead_id)
    base: dict[str, Any] = {"team": team, "action": action, "job_id": job_id, "lead_id": lead_id}
    held = await ledger.hold(team, action, 1, key=key, at=clock(), job_id=job_id, lead_id=lead_id)
    base |= {"charge_id": held.charge_id, "tokens": held.tokens}
    if held.refused:
        TOKENS.labels(action, "refused").inc(held.tokens)
        return base | {
            "status": "refused",
            "reason": "not enough tokens",
            "free_available": held.free_available,
            "additional_available": held.additional_available,
        }
    if held.state == "captured":
        # An earlier run searched and captured, then died before arq stored its result.
        return base | {"status": "already_charged", "reason": "this job's search was charged"}
    if held.state in ("released", "expired"):
        return base | {"status": "released", "reason": f"the hold was {held.state} earlier"}
    assert held.charge_id is not None
    if not held.replayed:
        TOKENS.labels(action, "held").inc(held.tokens)

    try:
        result = await search()
    except ProviderFailure as failure:
        if failure.retryable and job_try < max_tries:
            delay = backoff_seconds(job_try, backoff_base)
            log.info(
                "provider_retry",
                **base,
                key=key,
                reason=failure.reason,
                job_try=job_try,
                retry_in_s=delay,
            )
            raise Retry(defer=delay) from failure
        await ledger.release(held.charge_id, at=clock())
        TOKENS.labels(action, "released").inc(held.tokens)
        log.warning("provider_failed", **base, key=key, reason=failure.reason, job_try=job_try)
        return base | {
            "status": "failed",
            "reason": f"{failure.provider}: {failure.reason}",
            "charged": False,
        }

    try:
        settlement = await ledger.capture(held.charge_id, at=clock())
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        # The search happened but Postgres could not be told: retry the job rather
        # than fail it, or the sweep would later release tokens that were spent.
        # The rerun finds the same hold (and searches again, charged once).
        log.warning("capture_retry", **base, key=key, error=str(exc), job_try=job_try)
        raise Retry(defer=backoff_seconds(job_try, backoff_base)) from exc
    TOKENS.labels(action, "captured").inc(held.tokens)
    if settlement.threshold_reached and on_threshold is not None:
        await on_threshold(settlement)
    return base | {
        "status": "captured",
        "charged": True,
        "free_tokens": held.free_tokens,
        "additional_tokens": held.additional_tokens,
        "outcome": str(result.outcome),
        "provider": result.provider,
        "sandbox": result.sandbox,
        "data": result.data,
    }
