"""arq jobs: thin. Each validates its payload, then runs one metered search.

`member` (an arq keyword argument, absent from jobs queued without one): who
launched the job; the hold carries it, so their monthly cap applies.

A malformed payload fails the job with a clear error before anything is held.

Outages (runtime/transient.py): a job that meets an unreachable Postgres waits
it out, then goes back to the queue (`OutageRetry`) without using up one of
its tries; the hold-expiry sweep and the periodic reconcile wait it out, then
leave the work to their next run; the threshold reconcile goes back to the
queue. None of them fails for good, none crashes the worker.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from billing.reconcile import reconcile
from ledger.errors import ChargeAlreadySettled
from ledger.results import Settlement, StaleHold
from runtime.metrics import OUTAGES
from runtime.transient import is_transient, ride_out
from worker.context import Deps, JobContext
from worker.memo import CALL_TIMEOUT_S, JOB_KEY_TTL_S, memo_ttl_seconds, remembered, shared_memo
from worker.metering import metered
from worker.outages import OutageRetry, outage_defer_seconds
from worker.payloads import DebounceLead, IcebreakerPayload, Lead, SequencePayload, parse
from worker.providers import SearchResult, VendorsPaused
from worker.queue import ACTION_JOBS, OUTAGE_KEY_PREFIX, QUEUE, RECONCILE_JOB

log = structlog.get_logger("tokens.worker")


def outage_deadline(deps: Deps) -> float:
    """When a job must stop waiting out an outage: before arq's job timeout, which
    would fail it for good (a timeout is not a retry in arq)."""
    timeout = float(deps["settings"].job_timeout_seconds)
    return time.monotonic() + timeout - min(5.0, timeout * 0.2)


async def give_try_back(ctx: JobContext, exc: OutageRetry | VendorsPaused) -> None:
    """An outage is not one of the job's tries: undo arq's count of this run.

    arq counts a try when a run starts (INCR arq:retry:<job id>) and fails the
    job once that count passes max_tries; an outage must not get it there.
    The job's key is renewed too: arq sets it to expire a day after enqueue and
    never renews it, so a job put back near that day's end would "expire" in
    the queue, its search (remembered or not) never captured by it.
    Best effort: with Redis away too, this run counts as a try.
    """
    job_id = ctx["job_id"]
    try:
        async with ctx["redis"].pipeline(transaction=True) as pipe:
            pipe.decr(retry_key_prefix + job_id)
            pipe.pexpire(job_key_prefix + job_id, (exc.defer_score or 0) + JOB_KEY_TTL_S * 1000)
            pipe.incr(OUTAGE_KEY_PREFIX + job_id)
            pipe.expire(OUTAGE_KEY_PREFIX + job_id, 24 * 3600)
            await asyncio.wait_for(pipe.execute(), CALL_TIMEOUT_S)
    except Exception as err:
        if not is_transient(err):
            raise
        log.warning("outage_try_counted", job_id=job_id, what=exc.what, error=type(err).__name__)


async def queue_team_reconcile(redis: Any, team: str) -> bool:
    """Queue the team's reconcile after a capture over the threshold; False when a
    run that will bill it is already waiting.

    arq queues no job whose id is queued or running. A queued run bills whatever
    is due when it starts, so that is enough; but with one id, a capture made
    while the team's run was under way (past making the bills, sending them)
    queued nothing and waited for the periodic run. So while the first id runs,
    a second one queues a run behind it. No result is kept: an id is free again
    as soon as its run ends. Every capture of a team over the threshold calls
    this until the bill is made: one enqueue attempt, and one EXISTS while a run
    is under way.
    """
    first, behind = f"reconcile:{team}", f"reconcile:{team}:next"
    if await redis.enqueue_job(RECONCILE_JOB, team, _job_id=first, _queue_name=QUEUE):
        return True
    if not await redis.exists(in_progress_key_prefix + first):
        return False  # queued, not started: it will bill this capture too
    job = await redis.enqueue_job(RECONCILE_JOB, team, _job_id=behind, _queue_name=QUEUE)
    return job is not None


async def _run(
    ctx: JobContext,
    team: str,
    action: str,
    lead_id: str | None,
    search: Any,
    member: str | None = None,
) -> dict[str, Any]:
    deps = ctx["deps"]

    async def on_threshold(settlement: Settlement) -> None:
        try:
            await asyncio.wait_for(queue_team_reconcile(ctx["redis"], team), CALL_TIMEOUT_S)
        except Exception as exc:
            # The capture is done and must stay this job's result: the periodic
            # reconcile bills the team anyway.
            if is_transient(exc):
                log.warning("threshold_enqueue_lost", team=team, error=type(exc).__name__)
            else:
                log.error("threshold_enqueue_failed", team=team, exc_info=True)
        log.info("threshold_reached", team=team, unbilled=settlement.unbilled_additional)

    try:
        return await _metered_job(ctx, deps, team, action, lead_id, search, on_threshold, member)
    except (OutageRetry, VendorsPaused) as exc:
        await give_try_back(ctx, exc)
        raise


async def _metered_job(
    ctx: JobContext,
    deps: Deps,
    team: str,
    action: str,
    lead_id: str | None,
    search: Any,
    on_threshold: Any,
    member: str | None,
) -> dict[str, Any]:
    settings = deps["settings"]
    return await metered(
        deps["ledger"],
        team=team,
        action=action,
        job_id=ctx["job_id"],
        job_try=ctx.get("job_try", 1),
        max_tries=settings.job_max_tries,
        lead_id=lead_id,
        clock=deps["clock"],
        search=search,
        on_threshold=on_threshold,
        backoff_base=settings.retry_backoff_seconds,
        outage_until=outage_deadline(deps),
        outage_wait=settings.outage_wait_seconds,
        memo=shared_memo(ctx["redis"], memo_ttl_seconds(settings)),
        member=member,
    )


async def ai_sequence(
    ctx: JobContext, team: str, payload: dict[str, Any], member: str | None = None
) -> dict[str, Any]:
    body: SequencePayload = parse(SequencePayload, payload, "ai_sequence")

    async def search() -> SearchResult:
        return await ctx["deps"]["providers"].ai.sequence(body)

    return await _run(ctx, team, "ai_sequence", None, search, member)


async def ai_icebreaker(
    ctx: JobContext, team: str, payload: dict[str, Any], member: str | None = None
) -> dict[str, Any]:
    body: IcebreakerPayload = parse(IcebreakerPayload, payload, "ai_icebreaker")

    async def search() -> SearchResult:
        return await ctx["deps"]["providers"].ai.icebreaker(body)

    return await _run(ctx, team, "ai_icebreaker", body.lead.id, search, member)


async def enrich(
    ctx: JobContext, team: str, lead: dict[str, Any], member: str | None = None
) -> dict[str, Any]:
    body: Lead = parse(Lead, lead, "enrich lead")

    async def search() -> SearchResult:
        return await ctx["deps"]["providers"].enrich.enrich(body)

    return await _run(ctx, team, "enrich", body.id, search, member)


async def debounce(
    ctx: JobContext, team: str, lead: dict[str, Any], member: str | None = None
) -> dict[str, Any]:
    body: DebounceLead = parse(DebounceLead, lead, "debounce lead")

    async def search() -> SearchResult:
        return await ctx["deps"]["providers"].verify.verify(body)

    return await _run(ctx, team, "debounce", body.id, search, member)


async def reconcile_team(ctx: JobContext, team: str | None = None) -> dict[str, Any]:
    """Bill what is due (one team after a threshold, or everyone from cron).

    Postgres away: wait it out, then a team's reconcile goes back to the queue
    (not counted as a try); the periodic one leaves it to its next run.
    """
    deps = ctx["deps"]
    sender = deps["sender"]
    assert sender is not None

    # In chunks, within arq's job timeout: 10,000 month-end bills take minutes at
    # Stripe's rate limit. A run starts no bill after half the timeout and hands the
    # rest to a new job. (A longer timeout for this job alone would not do: arq keeps
    # every job's in-progress key for the longest timeout, so a killed worker's jobs
    # would wait that long.) A send cut off by the timeout anyway is safe: its lease
    # and reused idempotency keys keep it exactly once.
    async def run() -> dict[str, Any]:
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

    try:
        return await _ride_out_job(deps, run, "reconcile", team=team)
    except OutageRetry as exc:
        if team is None:
            return {"deferred": True, "reason": "database unreachable"}
        await give_try_back(ctx, exc)
        raise


async def reconcile_all(ctx: JobContext) -> dict[str, Any]:
    return await reconcile_team(ctx, None)


async def expire_holds(ctx: JobContext) -> dict[str, Any]:
    """Settle the holds of jobs arq no longer has (older than the hold TTL).

    Not the holds of jobs arq still has (queued, waiting to be tried again, or
    running): a job put back by a provider's 429 can wait behind a long queue
    for longer than the TTL, and its hold must still be there when it runs, to
    search then (or, with its search remembered, to be captured). arq deletes a
    job's key when the job ends, whatever the end, so what is left is the holds
    of jobs that ended without settling them (killed on their last try) or that
    arq dropped (expired in the queue). A running job counts by its in-progress
    key too: its job key may have expired under it (arq gives it a day from
    enqueue and does not renew it).

    Of those, a hold whose search is remembered (worker/memo.py) is captured:
    the search happened, its capture never answered, and no run of its job
    will come. The others are expired: their search never happened, or left no
    trace.

    Postgres or Redis away: wait it out, else leave it to the next run (the TTL
    is long, a few minutes later changes nothing). The expiry is one statement,
    all or nothing; each capture is its own, and a repeat of one is a replay.
    """
    deps = ctx["deps"]

    async def run() -> dict[str, Any]:
        now = deps["clock"]()
        older_than = now - timedelta(seconds=deps["settings"].hold_ttl_seconds)
        ledger = deps["ledger"]
        stale = await ledger.stale_holds(older_than=older_than)
        alive = await jobs_alive(ctx["redis"], sorted({h.job_id for h in stale}))
        orphans = [h for h in stale if h.job_id not in alive]
        searched = await remembered(ctx["redis"], [(h.team, h.key) for h in orphans])
        searched_holds = [h for h in orphans if (h.team, h.key) in searched]
        # Kept from expiry even if their capture below fails: the next sweep tries again.
        keep = alive | {h.job_id for h in searched_holds}
        captured = await capture_searched(ctx, ledger, searched_holds, now)
        expired = await ledger.expire_holds(older_than=older_than, at=now, keep_jobs=keep)
        return {
            "expired": len(expired),
            "kept_for_their_jobs": len(alive),
            "captured_searched": captured,
        }

    try:
        return await _ride_out_job(deps, run, "sweep")
    except OutageRetry:
        return {"deferred": True, "reason": "database unreachable"}


async def capture_searched(
    ctx: JobContext, ledger: Any, holds: list[StaleHold], at: datetime
) -> int:
    """Capture the holds of remembered searches; how many this call captured. One
    that fails stays held (kept from expiry) for the next sweep."""
    captured = 0
    for hold in holds:
        try:
            settlement = await ledger.capture(hold.charge_id, at=at)
        except ChargeAlreadySettled:
            continue  # settled meanwhile: nothing left to do
        except Exception as exc:
            if is_transient(exc):
                raise  # the whole sweep waits it out
            log.error("sweep_capture_failed", charge_id=hold.charge_id, job_id=hold.job_id,
                      error=f"{type(exc).__name__}: {exc}"[:200])  # fmt: skip
            continue
        if not settlement.changed:
            continue
        captured += 1
        log.warning("hold_captured_by_sweep", team=hold.team, charge_id=hold.charge_id,
                    key=hold.key, job_id=hold.job_id)  # fmt: skip
        if settlement.threshold_reached:
            try:
                await asyncio.wait_for(
                    queue_team_reconcile(ctx["redis"], hold.team), CALL_TIMEOUT_S
                )
            except Exception:
                # The capture stands; the periodic reconcile bills the team anyway.
                log.warning("threshold_enqueue_lost", team=hold.team, exc_info=True)
    return captured


async def jobs_alive(redis: Any, job_ids: list[str]) -> set[str]:
    """The jobs of `job_ids` that arq still has: queued or deferred (their job key),
    or running (their in-progress key, also once the job key has expired)."""
    if not job_ids:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(job_key_prefix + job_id, in_progress_key_prefix + job_id)
        found = await pipe.execute()
    return {job_id for job_id, n in zip(job_ids, found, strict=True) if n}


async def _ride_out_job(deps: Deps, run: Any, what: str, **fields: Any) -> dict[str, Any]:
    """`run` again while Postgres is away, up to the job's outage deadline; then
    `OutageRetry` (the caller decides: back to the queue, or the next cron run)."""
    wait = deps["settings"].outage_wait_seconds
    until = min(outage_deadline(deps), time.monotonic() + wait)
    try:
        out: dict[str, Any] = await ride_out(
            run,
            until=until,
            what=what,
            on_wait=lambda _: OUTAGES.labels(what, "waited").inc(),
            **fields,
        )
        return out
    except Exception as exc:
        if not is_transient(exc):
            raise
        OUTAGES.labels(what, "deferred").inc()
        log.warning("outage_deferred", what=what, error=f"{type(exc).__name__}: {exc}"[:200])
        raise OutageRetry(what, outage_defer_seconds(wait)) from exc


JOBS = (ai_sequence, ai_icebreaker, enrich, debounce)
assert {f.__name__ for f in JOBS} == ACTION_JOBS, "worker/queue.py names every action's job"
