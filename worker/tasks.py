"""arq jobs: thin. Each validates its payload, then runs one metered search.

A malformed payload fails the job with a clear error before anything is held.
"""

from __future__ import annotations

from typing import Any

import structlog

from billing.reconcile import reconcile
from ledger.service import Settlement
from worker.context import deps_of
from worker.metering import metered
from worker.payloads import DebounceLead, IcebreakerPayload, Lead, SequencePayload, parse
from worker.providers import SearchResult

log = structlog.get_logger("tokens.worker")

RECONCILE_JOB = "reconcile_team"
QUEUE = "tokens:queue"


async def _run(
    ctx: dict[str, Any], team: str, action: str, lead_id: str | None, search: Any
) -> dict[str, Any]:
    deps = deps_of(ctx)

    async def on_threshold(settlement: Settlement) -> None:
        # Deduplicated by job id while queued; no result is kept, so the next
        # crossing can enqueue again.
        await ctx["redis"].enqueue_job(
            RECONCILE_JOB, team, _job_id=f"reconcile:{team}", _queue_name=QUEUE
        )
        log.info("threshold_reached", team=team, unbilled=settlement.unbilled_additional)

    return await metered(
        deps["ledger"],
        team=team,
        action=action,
        job_id=ctx["job_id"],
        job_try=ctx.get("job_try", 1),
        max_tries=deps["settings"].job_max_tries,
        lead_id=lead_id,
        clock=deps["clock"],
        search=search,
        on_threshold=on_threshold,
        backoff_base=deps["settings"].retry_backoff_seconds,
    )


async def ai_sequence(ctx: dict[str, Any], team: str, payload: dict[str, Any]) -> dict[str, Any]:
    body: SequencePayload = parse(SequencePayload, payload, "ai_sequence")

    async def search() -> SearchResult:
        return await deps_of(ctx)["providers"].ai.sequence(body)

    return await _run(ctx, team, "ai_sequence", None, search)


async def ai_icebreaker(ctx: dict[str, Any], team: str, payload: dict[str, Any]) -> dict[str, Any]:
    body: IcebreakerPayload = parse(IcebreakerPayload, payload, "ai_icebreaker")

    async def search() -> SearchResult:
        return await deps_of(ctx)["providers"].ai.icebreaker(body)

    return await _run(ctx, team, "ai_icebreaker", body.lead.id, search)


async def enrich(ctx: dict[str, Any], team: str, lead: dict[str, Any]) -> dict[str, Any]:
    body: Lead = parse(Lead, lead, "enrich lead")

    async def search() -> SearchResult:
        return await deps_of(ctx)["providers"].enrich.enrich(body)

    return await _run(ctx, team, "enrich", body.id, search)


async def debounce(ctx: dict[str, Any], team: str, lead: dict[str, Any]) -> dict[str, Any]:
    body: DebounceLead = parse(DebounceLead, lead, "debounce lead")

    async def search() -> SearchResult:
        return await deps_of(ctx)["providers"].verify.verify(body)

    return await _run(ctx, team, "debounce", body.id, search)


async def reconcile_team(ctx: dict[str, Any], team: str | None = None) -> dict[str, Any]:
    """Bill what is due (one team after a threshold, or everyone from cron)."""
    deps = deps_of(ctx)
    sender = deps["sender"]
    assert sender is not None
    # In chunks, within arq's job timeout: 10,000 month-end bills take minutes at
    # Stripe's rate limit. A run starts no bill after half the timeout and hands the
    # rest to a new job. (A longer timeout for this job alone would not do: arq keeps
    # every job's in-progress key for the longest timeout, so a killed worker's jobs
    # would wait that long.) A send cut off by the timeout anyway is safe: its lease
    # and reused idempotency keys keep it exactly once.
    report = await reconcile(
        deps["ledger"].pool,
        sender,
        team=team,
        at=deps["clock"](),
        time_budget=deps["settings"].job_timeout_seconds / 2,
    )
    if report.deferred:
        await ctx["redis"].enqueue_job(RECONCILE_JOB, team, _queue_name=QUEUE)
    out = report.as_dict()
    out.pop("bills")
    return out


async def reconcile_all(ctx: dict[str, Any]) -> dict[str, Any]:
    return await reconcile_team(ctx, None)


async def expire_holds(ctx: dict[str, Any]) -> int:
    """Release holds whose worker died (older than the hold TTL)."""
    from datetime import timedelta

    deps = deps_of(ctx)
    now = deps["clock"]()
    expired = await deps["ledger"].expire_holds(
        older_than=now - timedelta(seconds=deps["settings"].hold_ttl_seconds), at=now
    )
    return len(expired)


JOBS = (ai_sequence, ai_icebreaker, enrich, debounce)
ACTION_JOBS = {f.__name__: f for f in JOBS}
