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

A search that happened is charged, whatever error its capture meets: not
only an outage but a statement or lock timeout while a bill locks the team's
month, a deadlock, a full disk, the worker stopping. Such a search is
remembered first (`SearchMemo`, in Redis), then its capture is tried again
like an outage, never failing the job for good; the job's next run captures
it without searching again, or, if arq never runs the job again, the
hold-expiry sweep does. A capture that answers, nearly every one, costs no
memo write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import structlog
from arq.worker import Retry

from ledger.errors import ChargeAlreadySettled, UnknownCharge
from ledger.results import Settlement
from ledger.service import Ledger
from runtime.metrics import jobs_counter, tokens_counter
from runtime.transient import is_contention, is_transient
from worker.outages import Outage, OutageRetry
from worker.providers import ProviderFailure, SearchResult

__all__ = ["OutageRetry", "SearchMemo", "charge_key", "metered"]

log = structlog.get_logger("tokens.worker")

Search = Callable[[], Awaitable[SearchResult]]
OnThreshold = Callable[[Settlement], Awaitable[None]]


class SearchMemo(Protocol):
    """Where a job remembers that its search happened, until the capture.

    Best effort: `get` answers None and `put` does nothing when the store is
    unreachable (the job then searches again on its next run, charged once).
    """

    async def get(self, key: str) -> SearchResult | None: ...

    async def put(self, key: str, result: SearchResult) -> None: ...


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
        outage=Outage(outage_until, outage_wait),
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
    outage: Outage,
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
    remembered = _Remembered(memo, f"{team}:{key}", held.replayed, base | {"key": key})
    reused = await remembered.read()
    if reused is not None:
        # An earlier run searched, then could not capture (Postgres was away, or the
        # worker died): capture what it found instead of searching a second time.
        log.info("search_reused", **base, key=key, job_try=job_try)
        result = reused
    else:
        searched = await _search(
            search, ledger, charge_id, base, key, job_try, max_tries, clock, backoff_base, outage,
            remembered.read,
        )  # fmt: skip
        if not isinstance(searched, SearchResult):
            return searched  # the search did not happen: the job's result says why
        result = searched

    try:
        settlement = await _capture(
            ledger, charge_id, clock, outage, fields, lambda: remembered.put(result)
        )
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
        "search_reused": remembered.reused is not None,
    }


class _Remembered:
    """The memo of one charge's search, as one run of its job sees it."""

    def __init__(
        self, memo: SearchMemo | None, key: str, replayed: bool, fields: dict[str, Any]
    ) -> None:
        self.memo = memo
        self.key = key
        self.replayed = replayed  # only a hold an earlier run placed can have a memo
        self.fields = fields
        self.reused: SearchResult | None = None  # an earlier run's search, once read

    async def read(self) -> SearchResult | None:
        """An earlier run's search, if one is remembered. Read again before a
        release: the first read may have met Redis away, and an earlier run's
        search must be captured, not released."""
        if self.memo is not None and self.replayed:
            self.reused = await self.memo.get(self.key)
        return self.reused

    async def put(self, result: SearchResult) -> None:
        """Remember `result`; also a search already remembered (each put renews the
        memo's expiry). Never raises: the capture is retried all the same, and a
        memo only spares the job's next run a second search."""
        if self.memo is None:
            return
        try:
            await self.memo.put(self.key, result)
        except Exception:
            log.error("search_memo_failed", **self.fields, exc_info=True)


# The ledger's final answers to a capture: there is nothing left to capture.
_FINAL = (ChargeAlreadySettled, UnknownCharge)


def _capture_again(exc: BaseException) -> bool:
    return not isinstance(exc, _FINAL)


async def _capture(
    ledger: Ledger,
    charge_id: int,
    clock: Callable[[], datetime],
    outage: Outage,
    fields: dict[str, Any],
    remember: Callable[[], Awaitable[None]],
) -> Settlement:
    """The capture of a search that happened: it must happen, whatever it meets.

    One that answers needs no memo (nearly every one: no Redis round trip per
    job). Any other end than the ledger's final answer (settled already, no
    such charge) leaves a search unrecorded, so `remember` comes first: the
    job's next run, or the sweep if arq never runs the job again, captures the
    search without searching again. Then the capture is tried again inside
    the job until its deadline and, past it, the job goes back to the queue
    without using a try: an error arq counts could fail the job for good on
    its last try. Each try ends by that deadline too, so a capture waiting on
    a lock never reaches arq's job timeout (a failure for good, not a retry).
    Only a worker killed outright between the search and the capture's commit
    leaves no memo: that lead is searched again on the next run, and still
    charged once.
    """

    async def capture() -> Settlement:
        return await outage.by_deadline(ledger.capture(charge_id, at=clock()))

    try:
        return await capture()
    except _FINAL:
        raise
    except (Exception, asyncio.CancelledError) as exc:
        await remember()
        if not isinstance(exc, Exception):
            raise
        failed = exc
    if not (is_transient(failed) or is_contention(failed)):
        # Neither an outage nor a lock: Postgres refused the capture itself.
        log.error("capture_failed", error=f"{type(failed).__name__}: {failed}"[:200], **fields)
    return await outage.wait_out(capture, "capture", fields, failed, retry_on=_capture_again)


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
    outage: Outage,
    earlier_search: Callable[[], Awaitable[SearchResult | None]],
) -> SearchResult | dict[str, Any]:
    """The provider's answer, or the job's result when the search did not happen.

    A search that fails for good releases the hold, unless an earlier run of
    the job searched (its answer remembered): that search is then the answer."""
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
        earlier = await earlier_search()
        if earlier is not None:
            log.warning("search_reused_not_released", **base, key=key, job_try=job_try)
            return earlier
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
