"""DeBounce, single email validation: `GET /v1/?api=KEY&email=...`.

Every answer has the shape `{"debounce": {...}, "success": "1"|"0", "balance"}`;
errors keep it with `success: "0"` and are told apart by their HTTP status.
At most 5 calls at once per key (a 429 past that, without Retry-After).
"""

from __future__ import annotations

from typing import Any

from worker.payloads import Lead
from worker.providers.base import Outcome
from worker.providers.vendor import (
    EMAIL_STATUS_OUTCOMES,
    NEVER,
    OURS,
    SEARCHED,
    WAIT,
    Answer,
    Request,
    Vendor,
)

OK = {"success": "1"}

ANSWERS = (
    Answer(200, SEARCHED, "Safe to Send", OK | {"debounce.result": "Safe to Send"}, "deliverable"),
    Answer(
        200,
        SEARCHED,
        "Risky (accept-all, role, disposable)",
        OK | {"debounce.result": "Risky"},
        "risky",
    ),
    Answer(
        200,
        SEARCHED,
        "Invalid (bounce, syntax, spam trap)",
        OK | {"debounce.result": "Invalid"},
        "undeliverable",
    ),
    Answer(
        200,
        SEARCHED,
        "Unknown (the server did not tell)",
        OK | {"debounce.result": "Unknown"},
        "unknown",
    ),
    Answer(400, NEVER, "bad request: the email parameter is missing or malformed"),
    Answer(401, OURS, "the API key is wrong"),
    Answer(402, OURS, "our credits are low"),
    Answer(429, WAIT, "maximum concurrent calls reached"),
    Answer(500, WAIT, "DeBounce server error"),
    Answer(503, WAIT, "DeBounce unavailable"),
)


class DeBounce(Vendor):
    name = "debounce"
    action = "verify"
    base_url = "https://api.debounce.io"
    answers = ANSWERS
    concurrency = 5

    def request(self, lead: Lead, key: str, min_confidence: int) -> Request | str:
        if not lead.email:
            return "the lead has no email to verify"
        return Request("GET", "/v1/", params={"api": key, "email": lead.email})

    def normalize(
        self, answer: Answer, body: dict[str, Any]
    ) -> tuple[Outcome, int, dict[str, Any]]:
        status = answer.email_status or "unknown"
        outcome, confidence = EMAIL_STATUS_OUTCOMES[status]
        found = body["debounce"]
        return (
            outcome,
            confidence,
            {
                "email": found.get("email"),
                "email_status": status,
                "status": status,
                "role": found.get("role"),
                "free_email": found.get("free_email"),
                "reason": found.get("reason"),
            },
        )
