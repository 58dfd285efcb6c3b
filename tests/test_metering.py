"""The metered search when Postgres fails at the worst moment, and the hold TTL rule."""

from __future__ import annotations

import asyncio

import pytest
from arq.worker import Retry
from pydantic import ValidationError

from ledger.results import Settlement
from ledger.service import Ledger
from runtime.config import Settings
from tests.conftest import at
from tests.factories import make_team
from worker.metering import metered
from worker.providers import Outcome, ProviderFailure, SearchResult

NOW = at("2026-03-10T12:00:00")


class CaptureFailsOnce(Ledger):
    """The real ledger, whose first capture meets a dropped connection."""

    failed = False

    async def capture(self, charge_id: int, *, at: object) -> Settlement:  # type: ignore[override]
        if not self.failed:
            self.failed = True
            raise ConnectionResetError("connection to Postgres lost")
        return await super().capture(charge_id, at=at)  # type: ignore[arg-type]


async def test_capture_lost_after_search_retries_and_charges_once(ledger: Ledger) -> None:
    await make_team(ledger, "acme", anchor="2026-03-01", at=NOW)
    flaky = CaptureFailsOnce(ledger.pool, ledger.catalog)
    searches = 0

    async def search() -> SearchResult:
        nonlocal searches
        searches += 1
        return SearchResult(Outcome.FOUND, {}, "test", sandbox=True)

    args = dict(
        team="acme",
        action="enrich",
        job_id="j",
        max_tries=3,
        lead_id="l",
        clock=lambda: NOW,
        search=search,
    )
    with pytest.raises(Retry):
        await metered(flaky, job_try=1, **args)  # type: ignore[arg-type]
    [charge] = await ledger.history("acme")
    assert charge.state == "held"  # not failed, not released: the job runs again
    out = await metered(flaky, job_try=2, **args)  # type: ignore[arg-type]
    assert out["status"] == "captured" and searches == 2
    [charge] = await ledger.history("acme")
    assert charge.state == "captured" and charge.tokens == 10


async def test_a_release_after_another_run_captured_answers_already_charged(
    ledger: Ledger,
) -> None:
    # arq ran the job twice at once (its first worker died): run A searched and
    # captured while run B, on its last try, met a 503 and went to release.
    await make_team(ledger, "acme", anchor="2026-03-01", at=NOW)
    b_searching, a_done = asyncio.Event(), asyncio.Event()

    async def found() -> SearchResult:
        await b_searching.wait()
        return SearchResult(Outcome.FOUND, {}, "test", sandbox=True)

    async def down() -> SearchResult:
        b_searching.set()
        await a_done.wait()
        raise ProviderFailure("test", "503", retryable=True)

    args = dict(team="acme", action="enrich", job_id="j", max_tries=3, lead_id="l",
                clock=lambda: NOW)  # fmt: skip
    b = asyncio.create_task(metered(ledger, job_try=3, search=down, **args))  # type: ignore[arg-type]
    a = await metered(ledger, job_try=2, search=found, **args)  # type: ignore[arg-type]
    a_done.set()
    assert a["status"] == "captured"
    assert (await b)["status"] == "already_charged"  # was: ChargeAlreadySettled raised
    [charge] = await ledger.history("acme")
    assert charge.state == "captured"


def test_a_provider_call_must_fit_in_half_a_job() -> None:
    # arq's timeout fails a job for good (not a retry) and leaves its hold behind.
    with pytest.raises(ValidationError, match="TOKENS_PROVIDER_TIMEOUT_SECONDS"):
        Settings(job_timeout_seconds=10, provider_timeout_seconds=20)
    with pytest.raises(ValidationError, match="at most half"):
        Settings(job_timeout_seconds=30, provider_timeout_seconds=16)
    assert Settings(job_timeout_seconds=30, provider_timeout_seconds=15).job_timeout_seconds == 30


def test_hold_ttl_must_outlive_every_try_of_a_job() -> None:
    Settings()  # the defaults are consistent
    with pytest.raises(ValidationError, match="TOKENS_HOLD_TTL_SECONDS"):
        Settings(hold_ttl_seconds=600, job_timeout_seconds=120, job_max_tries=5)
