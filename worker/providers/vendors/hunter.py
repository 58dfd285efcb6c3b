"""Hunter's email finder: `GET /v2/email-finder?domain=&first_name=&last_name=`,
key as `X-API-KEY`.

200 answers `data.email` (or null: no email found, a search all the same)
with `data.score` (0-100). Errors are `{"errors": [{id, code, details}]}`:
202 the verification still runs (ask again later), 403 its rate limit (15
calls a second, 500 a minute), 429 our monthly credits used up (never
retried: ours), 451 the person asked to be erased (the search ran; nobody
else is asked about them).
"""

from __future__ import annotations

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
    Answer(200, SEARCHED, "an email found", {"data.email": PRESENT}),
    Answer(200, SEARCHED, "no email found for this person", {"data": PRESENT}),
    Answer(202, WAIT, "the email's verification is still running: ask again later"),
    Answer(400, NEVER, "bad request: a parameter is missing or invalid"),
    Answer(401, OURS, "no valid API key"),
    Answer(403, WAIT, "rate limit: 15 calls a second, 500 a minute"),
    Answer(404, NEVER, "the route does not exist"),
    Answer(422, NEVER, "unprocessable: the domain or the name cannot be searched"),
    Answer(429, OURS, "the account's monthly credits are used up"),
    Answer(451, SEARCHED, "the person asked to be erased: drop them", stop=True),
    Answer(500, WAIT, "Hunter server error"),
    Answer(503, WAIT, "Hunter unavailable"),
)

# Hunter's verification verdict of the email it found, in our words.
_VERIFICATION = {
    "valid": "deliverable",
    "accept_all": "risky",
    "webmail": "risky",
    "disposable": "risky",
    "invalid": "undeliverable",
    "unknown": "unknown",
}


class Hunter(Vendor):
    name = "hunter"
    action = "enrich"
    base_url = "https://api.hunter.io"
    answers = ANSWERS
    rates = ((1.0, 15), (60.0, 500))

    def request(self, lead: Lead, key: str, min_confidence: int) -> Request | str:
        domain = lead.company_domain or (
            lead.email.rsplit("@", 1)[1] if lead.email and "@" in lead.email else None
        )
        if not (domain and lead.first_name and lead.last_name):
            return "Hunter needs a domain with a first and last name"
        params = {"domain": domain, "first_name": lead.first_name, "last_name": lead.last_name}
        return Request("GET", "/v2/email-finder", params=params, headers={"X-API-KEY": key})

    def normalize(
        self, answer: Answer, body: dict[str, Any]
    ) -> tuple[Outcome, int, dict[str, Any]]:
        if answer.status == 451:
            return Outcome.NOT_FOUND, 0, {"erased": True}
        data = body["data"]
        email = data.get("email")
        if not isinstance(email, str) or not email:
            return Outcome.NOT_FOUND, 0, {}
        score = data.get("score")
        confidence = max(0, min(int(score), 100)) if isinstance(score, int) else 0
        verification = data.get("verification")
        check = verification.get("status") if isinstance(verification, dict) else None
        return (
            Outcome.FOUND,
            confidence,
            {
                "email": email,
                "email_status": _VERIFICATION.get(check) if isinstance(check, str) else None,
                "phone": data.get("phone_number"),
                "title": data.get("position"),
                "company": data.get("company"),
                "linkedin": data.get("linkedin_url"),
                "score": score,
            },
        )

    def cooldown(self, response: httpx.Response, kind: Kind) -> float:
        return 1.0 if response.status_code == 403 else 0.0
