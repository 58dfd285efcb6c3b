"""People Data Labs, person enrichment: `POST /v5/person/enrich`, key as `X-Api-Key`.

200 is a match, with its `likelihood` (1-10); 404 `not_found` is a search
that found no one (PDL does not bill it; the team is charged: the search
ran). `min_likelihood` makes PDL answer 404 below the waterfall's minimum
confidence. Rate limits are a fixed 60 s window announced in every answer's
`x-ratelimit-remaining` / `x-ratelimit-reset`: at 0 every worker waits for
the reset.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from worker.payloads import Lead
from worker.providers.base import Outcome
from worker.providers.vendor import (
    NEVER,
    OURS,
    PRESENT,
    SEARCHED,
    WAIT,
    Answer,
    Kind,
    Request,
    Vendor,
)

ANSWERS = (
    Answer(200, SEARCHED, "a matching person", {"data": PRESENT}),
    Answer(404, SEARCHED, "not_found: no person matches (not billed by PDL)"),
    Answer(400, NEVER, "invalid_request_error: missing or invalid parameters"),
    Answer(401, OURS, "authentication_error: missing or invalid key"),
    Answer(402, OURS, "payment_required: the account's credits are used up"),
    Answer(403, OURS, "access_denied: the key may not use this API"),
    Answer(405, NEVER, "method not allowed"),
    Answer(429, WAIT, "rate_limit_error: requests too quick"),
    Answer(500, WAIT, "PDL server error"),
    Answer(503, WAIT, "PDL unavailable"),
)
_WINDOW_S = 60.0


class PeopleDataLabs(Vendor):
    name = "pdl"
    action = "enrich"
    base_url = "https://api.peopledatalabs.com"
    answers = ANSWERS

    def request(self, lead: Lead, key: str, min_confidence: int) -> Request | str:
        params: dict[str, Any] = {
            "email": lead.email,
            "first_name": lead.first_name,
            "last_name": lead.last_name,
            "company": lead.company_domain,
            "profile": lead.linkedin_url,
        }
        body = {k: v for k, v in params.items() if v}
        if min_confidence > 0:
            body["min_likelihood"] = max(1, min(10, math.ceil(min_confidence / 10)))
        return Request("POST", "/v5/person/enrich", headers={"X-Api-Key": key}, json=body)

    def normalize(
        self, answer: Answer, body: dict[str, Any]
    ) -> tuple[Outcome, int, dict[str, Any]]:
        if answer.status == 404:
            return Outcome.NOT_FOUND, 0, {}
        person = body["data"]
        likelihood = body.get("likelihood")
        confidence = int(likelihood) * 10 if isinstance(likelihood, int) else 0
        return (
            Outcome.FOUND,
            max(0, min(confidence, 100)),
            {
                "email": _text(person.get("work_email")) or _first(person.get("personal_emails")),
                "phone": _text(person.get("mobile_phone")) or _first(person.get("phone_numbers")),
                "title": _text(person.get("job_title")),
                "company": _text(person.get("job_company_name")),
                "linkedin": _text(person.get("linkedin_url")),
                "likelihood": likelihood,
            },
        )

    def cooldown(self, response: httpx.Response, kind: Kind) -> float:
        remaining = _remaining(response.headers.get("x-ratelimit-remaining"))
        if response.status_code != 429 and (remaining is None or remaining > 0):
            return 0.0
        return _until_reset(response.headers.get("x-ratelimit-reset"))


def _text(value: Any) -> str | None:
    # PDL's free plans answer `true` where a contact field exists but is hidden.
    return value if isinstance(value, str) and value else None


def _first(value: Any) -> str | None:
    if isinstance(value, list):
        for item in value:
            if _text(item):
                return str(item)
    return None


def _remaining(header: str | None) -> int | None:
    """`x-ratelimit-remaining`: a number, or per-window numbers (`{'minute': 99}`)."""
    numbers = [int(n) for n in re.findall(r"-?\d+", header or "")]
    return min(numbers) if numbers else None


def _until_reset(header: str | None) -> float:
    """Seconds until `x-ratelimit-reset` (epoch seconds or a UTC date), within one window."""
    now = time.time()
    at: float | None = None
    if header:
        text = header.strip()
        try:
            at = float(text)
        except ValueError:
            for parse in (datetime.fromisoformat, parsedate_to_datetime):
                try:
                    at = parse(text.replace(" UTC", "+00:00")).timestamp()
                    break
                except (ValueError, TypeError):
                    continue
    if at is None:
        return _WINDOW_S
    if at < 10**9:  # a number of seconds, not an instant
        return max(1.0, min(at, _WINDOW_S))
    return max(1.0, min(at - now, _WINDOW_S))
