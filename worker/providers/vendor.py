"""A real enrichment or verification vendor: one table of its documented answers.

Every answer a vendor documents means exactly one of four things for the
team's tokens (README, "Real vendors"):

- `SEARCHED`: the vendor performed the search, whatever it found: the lead is
  charged (captured), with the normalized result and the vendor's own verdict;
- `WAIT`: the vendor asks us to come back later (rate limit, 5xx, a check
  still running): the hold is kept and the job tried again;
- `NEVER`: the vendor refused this request (a malformed lead): no search,
  the hold is released unless another vendor of the waterfall searches;
- `OURS`: our key is refused or our credits are gone: no search, and the
  vendor is paused for every worker until the operator fixes it.

A vendor module declares its answers as `Answer` rows, first match wins, and
builds its request and its normalized result. What no row matches: any 2xx is
a search that happened (`unrecognized`, logged: the vendor ran it and bills
it, so the team is charged), 401/402 are ours, 408/425/429/5xx wait, other
statuses are refusals.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import httpx
import structlog

from runtime.metrics import VENDOR_ANSWERS, VENDOR_PAUSES
from worker.payloads import Lead
from worker.providers.base import Outcome, SearchResult, one_line
from worker.providers.gate import Gate

log = structlog.get_logger("tokens.worker")


class Kind(StrEnum):
    SEARCHED = "searched"
    WAIT = "wait"
    NEVER = "never"
    OURS = "ours"


@dataclass(frozen=True)
class Answer:
    """One documented answer: an HTTP status, what the body says, what it means.

    `when` maps a dotted path of the JSON body to the value it must hold
    (strings compared without case; a tuple: any of them); empty matches any
    body. `email_status` is the normalized verdict of a verification answer.
    `stop` ends the waterfall (the person asked to be erased: no other vendor
    is asked about them).
    """

    status: int
    kind: Kind
    meaning: str
    when: Mapping[str, Any] = field(default_factory=dict)
    email_status: str | None = None
    stop: bool = False

    def matches(self, status: int, body: Any) -> bool:
        if status != self.status:
            return False
        return all(_same(_dig(body, path), want) for path, want in self.when.items())


def _dig(body: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(body, dict):
            return None
        body = body.get(part)
    return body


def _same(value: Any, want: Any) -> bool:
    if isinstance(want, tuple):
        return any(_same(value, w) for w in want)
    if want is _PRESENT:
        return value not in (None, "", [], {})
    if isinstance(want, str) and isinstance(value, str):
        return value.strip().lower() == want.lower()
    return bool(value == want)


class _Present:
    def __repr__(self) -> str:
        return "PRESENT"


PRESENT: Any = _Present()  # `when={"error": PRESENT}`: the field is there and not empty
_PRESENT = PRESENT

# Verification verdicts, normalized: how sure the vendor is that the verdict holds.
EMAIL_STATUS_OUTCOMES = {
    "deliverable": (Outcome.FOUND, 100),
    "risky": (Outcome.FOUND, 50),
    "undeliverable": (Outcome.INVALID, 100),
    "unknown": (Outcome.NOT_FOUND, 0),
}
NORMALIZED = ("email", "email_status", "phone", "title", "company", "linkedin")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    json: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    """What one vendor said about one lead, in the terms of the table."""

    vendor: str
    kind: Kind
    reason: str
    http_status: int | None = None
    result: SearchResult | None = None
    confidence: int = 0
    stop: bool = False

    def trail(self) -> dict[str, Any]:
        """This vendor's line in the job's result (which vendor answered what)."""
        line: dict[str, Any] = {"vendor": self.vendor, "answer": str(self.kind)}
        if self.http_status is not None:
            line["http_status"] = self.http_status
        if self.result is not None:
            line["outcome"] = str(self.result.outcome)
            line["confidence"] = self.confidence
        line["reason"] = self.reason
        return line


class Vendor:
    """A vendor module's class: its name, action, address, limits and answers.

    Subclasses set the class attributes and write `request` and `normalize`.
    """

    name: ClassVar[str]
    action: ClassVar[str]  # "enrich" or "verify"
    base_url: ClassVar[str]  # scheme and host; TOKENS_<VENDOR>_BASE_URL replaces it
    answers: ClassVar[tuple[Answer, ...]]
    concurrency: ClassVar[int] = 0  # calls at once, all workers together; 0: no limit
    rates: ClassVar[tuple[tuple[float, int], ...]] = ()  # (window in seconds, calls)

    def request(self, lead: Lead, key: str, min_confidence: int) -> Request | str:
        """The vendor's request for this lead, or why the lead cannot be asked."""
        raise NotImplementedError

    def normalize(
        self, answer: Answer, body: dict[str, Any]
    ) -> tuple[Outcome, int, dict[str, Any]]:
        """A searched answer as (outcome, confidence 0-100, normalized data)."""
        status = answer.email_status or "unknown"
        outcome, confidence = EMAIL_STATUS_OUTCOMES[status]
        email = _dig(body, "email") or _dig(body, "address")
        return outcome, confidence, {"email": email, "email_status": status, "status": status}

    def cooldown(self, response: httpx.Response, kind: Kind) -> float:
        """Seconds every worker keeps off this vendor after `response` (rate limits)."""
        return 0.0

    def classify(self, status: int, body: Any) -> Answer | None:
        for answer in self.answers:
            if answer.matches(status, body):
                return answer
        return None


def fallback(status: int) -> Kind:
    """An answer no row of the table knows."""
    if 200 <= status < 300:
        return Kind.SEARCHED
    if status in (401, 402):
        return Kind.OURS
    if status in (408, 409, 425, 429) or status >= 500:
        return Kind.WAIT
    return Kind.NEVER


@dataclass
class VendorClient:
    """One vendor as the workers call it: its key, its shared gate, the HTTP client."""

    vendor: Vendor
    api_key: str
    base_url: str
    http: httpx.AsyncClient
    gate: Gate
    timeout: float = 20.0
    pause_seconds: float = 300.0

    @property
    def name(self) -> str:
        return self.vendor.name

    def __repr__(self) -> str:
        return f"VendorClient({self.vendor.name!r}, {self.base_url!r})"

    def scrub(self, text: str) -> str:
        """`text` without our key: a key in a query string travels in every URL."""
        return one_line(text.replace(self.api_key, "***")) if self.api_key else one_line(text)

    async def ask(self, lead: Lead, min_confidence: int) -> Reply:
        request = self.vendor.request(lead, self.api_key, min_confidence)
        if isinstance(request, str):
            return self._reply(Kind.NEVER, request)
        deadline = time.monotonic() + self.timeout
        token = await self.gate.enter(deadline)
        if token is None:
            return self._reply(Kind.WAIT, "busy: its rate or concurrency limit is reached")
        try:
            response = await self._send(request, deadline)
        finally:
            await self.gate.leave(token)
        if isinstance(response, Reply):
            return response
        return await self._read(response)

    async def _send(self, request: Request, deadline: float) -> httpx.Response | Reply:
        try:
            return await self.http.request(
                request.method,
                f"{self.base_url}{request.path}",
                params=request.params or None,
                headers={"Accept": "application/json", **request.headers},
                json=request.json,
                timeout=max(deadline - time.monotonic(), 0.1),
            )
        except httpx.TimeoutException as exc:
            kind = type(exc).__name__.removesuffix("Timeout").lower() or "request"
            return self._reply(Kind.WAIT, f"timeout after {self.timeout:g}s ({kind})")
        except httpx.TransportError as exc:
            # httpx names the URL in some errors: scrubbed, it still says what failed.
            return self._reply(
                Kind.WAIT, f"unreachable: {self.scrub(str(exc) or type(exc).__name__)}"
            )
        except httpx.HTTPError as exc:  # DecodingError, TooManyRedirects: no answer we can read
            return self._reply(
                Kind.WAIT, f"bad response: {self.scrub(str(exc) or type(exc).__name__)}"
            )

    async def _read(self, response: httpx.Response) -> Reply:
        status = response.status_code
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        answer = self.vendor.classify(status, body)
        kind = answer.kind if answer is not None else fallback(status)
        meaning = answer.meaning if answer is not None else "an answer the vendor does not document"
        reason = f"HTTP {status}: {meaning}"
        cool = self.vendor.cooldown(response, kind)
        if cool > 0:
            await self.gate.cool(cool)
        if kind is Kind.OURS:
            await self._pause(reason)
        if kind is not Kind.SEARCHED:
            return self._reply(kind, reason, status, stop=answer is not None and answer.stop)
        if answer is None or not isinstance(body, dict):
            return self._unrecognized(status, response.text)
        try:
            outcome, confidence, data = self.vendor.normalize(answer, body)
        except (KeyError, TypeError, ValueError, AttributeError):
            return self._unrecognized(status, response.text)
        return self._searched(outcome, confidence, data, body, reason, status, answer.stop)

    def _searched(
        self,
        outcome: Outcome,
        confidence: int,
        data: dict[str, Any],
        body: dict[str, Any],
        reason: str,
        status: int,
        stop: bool,
    ) -> Reply:
        normalized = {k: data.get(k) for k in NORMALIZED} | {
            k: v for k, v in data.items() if k not in NORMALIZED
        }
        normalized = _scrub_json(normalized, self.api_key)
        normalized |= {"confidence": confidence, "verdict": self._verdict(body, status)}
        result = SearchResult(outcome, normalized, self.vendor.name, sandbox=False)
        return self._reply(Kind.SEARCHED, reason, status, result, confidence, stop)

    def _unrecognized(self, status: int, text: str) -> Reply:
        """A 2xx the table cannot read: the vendor ran the search (and bills it)."""
        raw = self.scrub(text)[:200]
        log.warning(
            "vendor_answer_unrecognized", vendor=self.vendor.name, http_status=status, raw=raw
        )
        data = dict.fromkeys(NORMALIZED) | {
            "unrecognized": True,
            "confidence": 0,
            "verdict": {"http_status": status, "raw": raw},
        }
        result = SearchResult(Outcome.UNRECOGNIZED, data, self.vendor.name, sandbox=False)
        return self._reply(
            Kind.SEARCHED, f"HTTP {status}: an answer we cannot read", status, result
        )

    def _verdict(self, body: dict[str, Any], status: int) -> dict[str, Any]:
        """The vendor's own words, kept with the result (never our key)."""
        verdict = _scrub_json(body, self.api_key)
        return {"http_status": status, "body": verdict}

    async def _pause(self, reason: str) -> None:
        if await self.gate.pause(self.pause_seconds):
            VENDOR_PAUSES.labels(self.vendor.name).inc()
            log.error(
                "vendor_paused",
                vendor=self.vendor.name,
                reason=reason,
                pause_s=self.pause_seconds,
                action="check the vendor key and credits; jobs wait while it is paused",
            )

    def _reply(
        self,
        kind: Kind,
        reason: str,
        status: int | None = None,
        result: SearchResult | None = None,
        confidence: int = 0,
        stop: bool = False,
    ) -> Reply:
        VENDOR_ANSWERS.labels(self.vendor.name, str(kind)).inc()
        return Reply(self.vendor.name, kind, self.scrub(reason), status, result, confidence, stop)


_VERDICT_MAX_ITEMS = 60


def _scrub_json(value: Any, key: str, depth: int = 0) -> Any:
    """A vendor's body, bounded, with our key taken out wherever it was echoed."""
    if depth > 4:
        return None
    if isinstance(value, dict):
        items = list(value.items())[:_VERDICT_MAX_ITEMS]
        return {str(k): _scrub_json(v, key, depth + 1) for k, v in items}
    if isinstance(value, list):
        return [_scrub_json(v, key, depth + 1) for v in value[:_VERDICT_MAX_ITEMS]]
    if isinstance(value, str):
        text = value.replace(key, "***") if key else value
        return text[:500]
    return value


# For the vendors' tables: one word per meaning.
SEARCHED, WAIT, NEVER, OURS = Kind.SEARCHED, Kind.WAIT, Kind.NEVER, Kind.OURS
