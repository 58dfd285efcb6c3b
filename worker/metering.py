"""One metered search: hold, search, then capture or release.

"Charged on search, not on success": once the provider has performed the
search the tokens are spent, whatever it found. They come back only when the
search never happened: a provider that could not be reached or failed on
every try, or a request it refused. A cancelled job keeps its hold: arq runs
it again and the same key finds the same hold; if it never runs again the
hold-expiry sweep releases it.

Outages: when Postgres (or Redis) is away (a restart, a failover), the hold,
the capture and the release are tried again with backoff inside the job, up
to a deadline below the job's timeout; past it the job is put back in the
queue (`OutageRetry`), which the worker does not count as one of the job's
tries (worker/tasks.py). The hold's idempotency key makes every repeat safe.
A search whose capture does not answer (Postgres away, the worker stopping)
is remembered first (`SearchMemo`, in Redis, until the hold TTL), so the job's
next run captures it without searching again; a capture that answers, nearly
every one, costs no memo write.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

import structlog
from arq.worker import Retry

from ledger.errors import ChargeAlreadySettled
from ledger.results import Settlement
from ledger.service import Ledger
from runtime.metrics import OUTAGES, jobs_counter, tokens_counter
from runtime.transient import is_transient, ride_out
from worker.providers import ProviderFailure, SearchResult

log = structlog.get_logger("tokens.worker")

Search = Callable[[], Awaitable[SearchResult]]
OnThreshold = Callable[[Settlement], Awaitable[None]]
T = TypeVar("T")


class SearchMemo(Protocol):
    """Where a job remembers that its search happened, until the capture.

    Best effort: `get` answers None and `put` does nothing when the store is
    unreachable (the job then searches again on its next run, charged once).
    """

    async def get(self, key: str) -> SearchResult | None: ...

    async def put(self, key: str, result: SearchResult) -> None: ...


class OutageRetry(Retry):
    """Postgres or Redis is away: run this job again later.

    Not a failure of the job nor one of its tries: the worker gives arq's try
    back (worker/tasks.py), so an outage never uses up TOKENS_JOB_MAX_TRIES.
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


# A refused hold's code (HoldResult.refusal) -> the job result's reason.
REFUSAL_REASONS = {
    "not_enough_tokens": "not enough tokens",
    "member_cap": "over the member's monthly cap",
}


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
    outage_until: float | None = None,
    outage_wait: float = 0.0,
    memo: SearchMemo | None = None,
    member: str | None = None,
) -> dict[str, Any]:
    """One metered search. `member`: who launched the job; their cap bounds the hold.

    `outage_until` (a `time.monotonic()` deadline, below the job's timeout):
    until then an unreachable Postgres is waited out inside the job, each
    ledger call for at most `outage_wait` seconds; past it, or without a
    deadline, the job raises `OutageRetry`.
    """
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
        outage=_Outage(outage_until, outage_wait),
        memo=memo,
        member=member,
    )
    jobs_counter(action, out["status"]).inc()
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
    outage: _Outage,
    memo: SearchMemo | None,
    member: str | None,
) -> dict[str, Any]:
    key = charge_key(job_id, lead_id)
    base: dict[str, Any] = {"team": team, "action": action, "job_id": job_id, "lead_id": lead_id}
    fields = {"job_id": job_id, "key": key}
    held = await outage.guard(
        lambda: ledger.hold(
            team, action, 1, key=key, at=clock(), job_id=job_id, lead_id=lead_id, member=member
        ),
        "hold",
        fields,
    )
    base |= {"charge_id": held.charge_id, "tokens": held.tokens}
    if held.refused:
        tokens_counter(action, "refused").inc(held.tokens)
        return base | {
            "status": "refused",
            "code": held.refusal,
            "reason": REFUSAL_REASONS.get(held.refusal or "", "not enough tokens"),
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
        tokens_counter(action, "held").inc(held.tokens)

    charge_id = held.charge_id
    reused = await memo.get(f"{team}:{key}") if memo is not None and held.replayed else None
    if reused is not None:
        # An earlier run searched, then could not capture (Postgres was away, or the
        # worker died): capture what it found instead of searching a second time.
        log.info("search_reused", **base, key=key, job_try=job_try)
        result = reused
    else:
        searched = await _search(
            search, ledger, charge_id, base, key, job_try, max_tries, clock, backoff_base, outage
        )
        if not isinstance(searched, SearchResult):
            return searched  # the search did not happen: the job's result says why
        result = searched

    async def remember() -> None:
        if memo is not None and reused is None:
            await memo.put(f"{team}:{key}", result)

    try:
        settlement = await _capture(ledger, charge_id, clock, outage, fields, remember)
    except ChargeAlreadySettled:
        # The hold outlived TOKENS_HOLD_TTL_SECONDS (an outage longer than the TTL) and
        # the sweep gave the tokens back: the search happened but is not charged.
        log.error("capture_after_expiry", **base, key=key, job_try=job_try)
        return base | {
            "status": "released",
            "reason": "the hold expired before the capture: this search was not charged",
            "charged": False,
            "outcome": str(result.outcome),
            "provider": result.provider,
            "sandbox": result.sandbox,
            "data": result.data,
        }
    tokens_counter(action, "captured").inc(held.tokens)
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
        # True when an earlier run's search was captured (no second search).
        "search_reused": reused is not None,
    }


async def _capture(
    ledger: Ledger,
    charge_id: int,
    clock: Callable[[], datetime],
    outage: _Outage,
    fields: dict[str, Any],
    remember: Callable[[], Awaitable[None]],
) -> Settlement:
    """The capture of a search that happened.

    One that answers needs no memo (nearly every one: no Redis round trip per
    job). One that does not (Postgres away, the worker stopping, a lost
    answer) calls `remember` first, so that the job's next run captures the
    search without searching again; then an outage is waited out as for any
    ledger call. Only a worker killed outright between the search and the
    capture's commit leaves no memo: that lead is searched again on the next
    run, and still charged once.
    """

    async def capture() -> Settlement:
        return await ledger.capture(charge_id, at=clock())

    try:
        return await capture()
    except (Exception, asyncio.CancelledError) as exc:
        if not isinstance(exc, ChargeAlreadySettled):
            await remember()
        if not (isinstance(exc, Exception) and is_transient(exc)):
            raise
        failed = exc
    return await outage.wait_out(capture, "capture", fields, failed)


async def _search(
    search: Search,
    ledger: Ledger,
    charge_id: int,
    base: dict[str, Any],
    key: str,
    job_try: int,
    max_tries: int,
    clock: Callable[[], datetime],
    backoff_base: float,
    outage: _Outage,
) -> SearchResult | dict[str, Any]:
    """The provider's answer, or the job's result when the search did not happen."""
    action = base["action"]
    try:
        return await search()
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
        try:
            await outage.guard(
                lambda: ledger.release(charge_id, at=clock()),
                "release",
                {"job_id": base["job_id"], "key": key},
            )
        except ChargeAlreadySettled as settled:
            # Another run of this job (arq redelivers a job whose worker died) settled
            # the hold first: its search was charged, or the tokens are already back.
            if settled.state == "captured":
                log.warning("release_after_capture", **base, key=key, job_try=job_try)
                return base | {
                    "status": "already_charged",
                    "reason": "another run of this job searched and was charged",
                }
        else:
            tokens_counter(action, "released").inc(base["tokens"])
        log.warning("provider_failed", **base, key=key, reason=failure.reason, job_try=job_try)
        return base | {
            "status": "failed",
            "reason": f"{failure.provider}: {failure.reason}",
            "charged": False,
        }


class _Outage:
    """Ledger calls that wait out an outage until a deadline, then put the job back."""

    def __init__(self, until: float | None, wait: float) -> None:
        self.until = until
        self.wait = wait

    async def guard(self, call: Callable[[], Awaitable[T]], what: str, fields: dict[str, Any]) -> T:
        try:
            return await call()  # nearly always: no deadline to work out, no wrapper
        except Exception as exc:
            if not is_transient(exc):
                raise
            failed = exc
        return await self.wait_out(call, what, fields, failed)

    async def wait_out(
        self,
        call: Callable[[], Awaitable[T]],
        what: str,
        fields: dict[str, Any],
        failed: Exception,
    ) -> T:
        """`call` failed, Postgres (or Redis) being away: `call` again, with backoff,
        until the deadline; past it, or without one, put the job back (OutageRetry)."""
        try:
            if self.until is None:
                raise failed
            until = min(self.until, time.monotonic() + self.wait)
            return await ride_out(
                call,
                until=until,
                what=what,
                on_wait=lambda _: OUTAGES.labels(what, "waited").inc(),
                **fields,
            )
        except Exception as exc:
            if not is_transient(exc):
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
