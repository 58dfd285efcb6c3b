"""ZeroBounce, single email validation: `GET /v2/validate?api_key=KEY&email=...`.

A finished check is always 200 with `status` and `sub_status`. `unknown`
(greylisted, a mail server's temporary error) is not billed by ZeroBounce,
but the check ran: the team is charged, as for any finished check. A wrong
key or no credits answer 200 with `{"error": "..."}`; 403 is its API shield
(wait), 429 and 5xx wait too.
"""

from __future__ import annotations

from typing import Any

from worker.payloads import Lead
from worker.providers.base import Outcome
from worker.providers.vendor import (
    EMAIL_STATUS_OUTCOMES,
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
    Answer(200, SEARCHED, "valid", {"status": "valid"}, "deliverable"),
    Answer(200, SEARCHED, "invalid", {"status": "invalid"}, "undeliverable"),
    Answer(
        200,
        SEARCHED,
        "catch-all: the domain accepts every address",
        {"status": "catch-all"},
        "risky",
    ),
    Answer(200, SEARCHED, "spamtrap", {"status": "spamtrap"}, "undeliverable"),
    Answer(200, SEARCHED, "abuse: the owner marks mail as spam", {"status": "abuse"}, "risky"),
    Answer(
        200,
        SEARCHED,
        "do_not_mail (role, disposable, toxic...)",
        {"status": "do_not_mail"},
        "undeliverable",
    ),
    Answer(
        200,
        SEARCHED,
        "unknown (greylisted, server did not answer)",
        {"status": "unknown"},
        "unknown",
    ),
    # Its way to say "Invalid API key or your account ran out of credits".
    Answer(200, OURS, "an error instead of a verdict: our key or our credits", {"error": PRESENT}),
    Answer(400, NEVER, "bad request (missing or malformed parameter)"),
    Answer(401, OURS, "the API key is wrong"),
    Answer(403, WAIT, "API shield: too many requests from this key"),
    Answer(429, WAIT, "rate limit"),
    Answer(500, WAIT, "ZeroBounce server error"),
)


class ZeroBounce(Vendor):
    name = "zerobounce"
    action = "verify"
    base_url = "https://api.zerobounce.net"
    answers = ANSWERS

    def request(self, lead: Lead, key: str, min_confidence: int) -> Request | str:
        if not lead.email:
            return "the lead has no email to verify"
        return Request(
            "GET", "/v2/validate", params={"api_key": key, "email": lead.email, "ip_address": ""}
        )

    def normalize(
        self, answer: Answer, body: dict[str, Any]
    ) -> tuple[Outcome, int, dict[str, Any]]:
        status = answer.email_status or "unknown"
        outcome, confidence = EMAIL_STATUS_OUTCOMES[status]
        return (
            outcome,
            confidence,
            {
                "email": body.get("address"),
                "email_status": status,
                "status": status,
                "sub_status": body.get("sub_status"),
                "free_email": body.get("free_email"),
            },
        )

    def cooldown(self, response: Any, kind: Kind) -> float:
        return 10.0 if response.status_code == 403 else 0.0
