"""What every provider is: the result of a search that happened, or a failure that says
whether to retry, and the protocols the jobs call."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from arq.worker import Retry

from worker.payloads import IcebreakerPayload, Lead, SequencePayload


class Outcome(StrEnum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    # The provider answered 2xx with something we cannot read: it searched (and
    # bills it), so the lead is charged; the raw answer is kept and logged.
    UNRECOGNIZED = "unrecognized"


@dataclass(frozen=True)
class SearchResult:
    """The search happened: the job captures its hold, whatever the outcome."""

    outcome: Outcome
    data: dict[str, Any]
    provider: str
    sandbox: bool


class ProviderFailure(Exception):
    """The search did NOT happen: retry (same hold) if `retryable`, else release."""

    def __init__(self, provider: str, reason: str, *, retryable: bool) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason
        self.retryable = retryable


class VendorsPaused(Retry):
    """Every vendor of the waterfall is paused (our key or our credits): the job
    waits in the queue with its hold, and this wait is not one of its tries."""

    what = "vendors_paused"

    def __init__(self, defer: float) -> None:
        super().__init__(defer=defer)
        self.defer_s = defer


class AIProvider(Protocol):
    name: str
    sandbox: bool

    async def sequence(self, payload: SequencePayload) -> SearchResult:
        """data: {"steps": [{"subject": ..., "body": ...}, ...]}"""
        ...

    async def icebreaker(self, payload: IcebreakerPayload) -> SearchResult:
        """data: {"icebreaker": "..."}"""
        ...


class EnrichProvider(Protocol):
    name: str
    sandbox: bool

    async def enrich(self, lead: Lead) -> SearchResult:
        """FOUND with {email, phone, job_title, company, ...}, or NOT_FOUND."""
        ...


class VerifyProvider(Protocol):
    name: str
    sandbox: bool

    async def verify(self, lead: Lead) -> SearchResult:
        """FOUND (deliverable/risky), INVALID (undeliverable), NOT_FOUND (unknown).

        data: {"email": ..., "status": ...}
        """
        ...


VERIFY_OUTCOMES = {
    "deliverable": Outcome.FOUND,
    "risky": Outcome.FOUND,
    "undeliverable": Outcome.INVALID,
    "unknown": Outcome.NOT_FOUND,
}


_REASON_MAX = 200


def one_line(text: str) -> str:
    """A provider's reason as one short line (never a page of HTML)."""
    line = " ".join(text.split())
    return line if len(line) <= _REASON_MAX else line[: _REASON_MAX - 3] + "..."
