"""The vendors' documented answers, as examples their fakes send back.

One source for the in-process fakes (respx) and the local HTTP server the
process test starts (`VendorServer`). Each example names what it must mean
(`kind`: searched, wait, never, ours) and, for a search, the outcome and the
normalized email status.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Example:
    vendor: str
    label: str
    status: int
    body: Any
    kind: str
    outcome: str | None = None
    email_status: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _debounce(result: str, code: str, reason: str) -> dict[str, Any]:
    return {
        "debounce": {
            "email": "jane@acme.com",
            "code": code,
            "role": "false",
            "free_email": "false",
            "result": result,
            "reason": reason,
            "send_transactional": "1",
            "did_you_mean": "",
        },
        "success": "1",
        "balance": "3198.6",
    }


def _debounce_error(error: str) -> dict[str, Any]:
    return {"debounce": {"error": error, "code": "0"}, "success": "0"}


def _zerobounce(status: str, sub_status: str = "") -> dict[str, Any]:
    return {
        "address": "jane@acme.com",
        "status": status,
        "sub_status": sub_status,
        "free_email": False,
        "did_you_mean": None,
        "account": "jane",
        "domain": "acme.com",
        "mx_found": "true",
        "processed_at": "2026-12-01 10:00:00.000",
    }


PDL_PERSON = {
    "status": 200,
    "likelihood": 8,
    "data": {
        "full_name": "jane doe",
        "work_email": "jane.doe@acme.com",
        "personal_emails": ["jane@gmail.com"],
        "mobile_phone": "+14155550123",
        "phone_numbers": ["+14155550123"],
        "job_title": "head of sales",
        "job_company_name": "acme",
        "linkedin_url": "linkedin.com/in/janedoe",
    },
}


def _pdl_error(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"status": status, "error": {"type": kind, "message": message}}


HUNTER_FOUND = {
    "data": {
        "first_name": "Jane",
        "last_name": "Doe",
        "email": "jane.doe@acme.com",
        "score": 92,
        "domain": "acme.com",
        "accept_all": False,
        "position": "Head of Sales",
        "twitter": None,
        "linkedin_url": "https://www.linkedin.com/in/janedoe",
        "phone_number": None,
        "company": "Acme",
        "sources": [],
        "verification": {"date": "2026-11-30", "status": "valid"},
    },
    "meta": {"params": {"first_name": "Jane", "last_name": "Doe", "domain": "acme.com"}},
}
HUNTER_NO_EMAIL = {
    "data": {
        "first_name": "Jane",
        "last_name": "Doe",
        "email": None,
        "score": None,
        "domain": "acme.com",
        "verification": {"date": None, "status": None},
    },
    "meta": {"params": {"first_name": "Jane", "last_name": "Doe", "domain": "acme.com"}},
}


def _hunter_error(code: int, id_: str, details: str) -> dict[str, Any]:
    return {"errors": [{"id": id_, "code": code, "details": details}]}


EXAMPLES: tuple[Example, ...] = (
    # DeBounce
    Example(
        "debounce",
        "safe",
        200,
        _debounce("Safe to Send", "5", "Deliverable"),
        "searched",
        "found",
        "deliverable",
    ),
    Example(
        "debounce",
        "risky",
        200,
        _debounce("Risky", "4", "Accept-All"),
        "searched",
        "found",
        "risky",
    ),
    Example(
        "debounce",
        "invalid",
        200,
        _debounce("Invalid", "6", "Bounce"),
        "searched",
        "invalid",
        "undeliverable",
    ),
    Example(
        "debounce",
        "unknown",
        200,
        _debounce("Unknown", "7", "Unknown"),
        "searched",
        "not_found",
        "unknown",
    ),
    Example("debounce", "bad-request", 400, _debounce_error("Wrong email format"), "never"),
    Example("debounce", "bad-key", 401, _debounce_error("Wrong API"), "ours"),
    Example("debounce", "credits", 402, _debounce_error("Credits Low"), "ours"),
    Example(
        "debounce", "concurrency", 429, _debounce_error("Maximum concurrent calls reached"), "wait"
    ),
    Example("debounce", "server", 500, None, "wait"),
    Example("debounce", "unavailable", 503, None, "wait"),
    # ZeroBounce
    Example("zerobounce", "valid", 200, _zerobounce("valid"), "searched", "found", "deliverable"),
    Example(
        "zerobounce",
        "invalid",
        200,
        _zerobounce("invalid", "mailbox_not_found"),
        "searched",
        "invalid",
        "undeliverable",
    ),
    Example("zerobounce", "catch-all", 200, _zerobounce("catch-all"), "searched", "found", "risky"),
    Example(
        "zerobounce",
        "spamtrap",
        200,
        _zerobounce("spamtrap"),
        "searched",
        "invalid",
        "undeliverable",
    ),
    Example("zerobounce", "abuse", 200, _zerobounce("abuse"), "searched", "found", "risky"),
    Example(
        "zerobounce",
        "do-not-mail",
        200,
        _zerobounce("do_not_mail", "role_based"),
        "searched",
        "invalid",
        "undeliverable",
    ),
    Example(
        "zerobounce",
        "unknown",
        200,
        _zerobounce("unknown", "greylisted"),
        "searched",
        "not_found",
        "unknown",
    ),
    Example(
        "zerobounce",
        "key-or-credits",
        200,
        {"error": "Invalid API key or your account ran out of credits"},
        "ours",
    ),
    Example("zerobounce", "bad-request", 400, {"error": "Missing parameter: email"}, "never"),
    Example("zerobounce", "unauthorized", 401, None, "ours"),
    Example("zerobounce", "shield", 403, None, "wait"),
    Example("zerobounce", "rate", 429, None, "wait"),
    Example("zerobounce", "server", 500, None, "wait"),
    # People Data Labs
    Example(
        "pdl",
        "match",
        200,
        PDL_PERSON,
        "searched",
        "found",
        headers={"x-ratelimit-remaining": "{'minute': 99}", "x-ratelimit-limit": "{'minute': 100}"},
    ),
    Example(
        "pdl",
        "not-found",
        404,
        _pdl_error(404, "not_found", "No records were found matching your request"),
        "searched",
        "not_found",
    ),
    Example(
        "pdl",
        "bad-request",
        400,
        _pdl_error(400, "invalid_request_error", "Request object must contain"),
        "never",
    ),
    Example(
        "pdl", "bad-key", 401, _pdl_error(401, "authentication_error", "Invalid API key"), "ours"
    ),
    Example(
        "pdl",
        "credits",
        402,
        _pdl_error(402, "payment_required", "You have reached your account maximum"),
        "ours",
    ),
    Example(
        "pdl",
        "denied",
        403,
        _pdl_error(403, "access_denied", "Your API key does not have access"),
        "ours",
    ),
    Example(
        "pdl", "method", 405, _pdl_error(405, "method_not_allowed", "Method not allowed"), "never"
    ),
    Example(
        "pdl",
        "rate",
        429,
        _pdl_error(
            429, "rate_limit_error", "An error occurred due to requests hitting the API too quick"
        ),
        "wait",
        headers={"x-ratelimit-remaining": "{'minute': 0}", "x-ratelimit-reset": "2"},
    ),
    Example("pdl", "server", 500, _pdl_error(500, "api_error", "internal"), "wait"),
    Example("pdl", "unavailable", 503, None, "wait"),
    # Hunter
    Example("hunter", "found", 200, HUNTER_FOUND, "searched", "found", "deliverable"),
    Example("hunter", "no-email", 200, HUNTER_NO_EMAIL, "searched", "not_found"),
    Example(
        "hunter",
        "verifying",
        202,
        _hunter_error(202, "verification_in_progress", "Verification is still running"),
        "wait",
    ),
    Example(
        "hunter",
        "bad-request",
        400,
        _hunter_error(400, "wrong_params", "You are missing the domain parameter"),
        "never",
    ),
    Example(
        "hunter",
        "bad-key",
        401,
        _hunter_error(401, "authentication_failed", "No user found for the API key supplied"),
        "ours",
    ),
    Example(
        "hunter",
        "rate",
        403,
        _hunter_error(403, "too_many_requests", "You have reached the rate limit"),
        "wait",
    ),
    Example(
        "hunter",
        "route",
        404,
        _hunter_error(404, "not_found", "This route does not exist"),
        "never",
    ),
    Example(
        "hunter",
        "unprocessable",
        422,
        _hunter_error(422, "invalid_domain", "The domain is invalid"),
        "never",
    ),
    Example(
        "hunter",
        "credits",
        429,
        _hunter_error(429, "too_many_requests", "You have reached your usage limit"),
        "ours",
    ),
    Example(
        "hunter",
        "erased",
        451,
        _hunter_error(
            451, "claimed_email", "The person behind this email has asked us to stop processing"
        ),
        "searched",
        "not_found",
    ),
    Example("hunter", "server", 500, None, "wait"),
    Example("hunter", "unavailable", 503, None, "wait"),
)

# Where each vendor listens (the paths are the vendors' own).
PATHS = {
    "debounce": ("GET", "/v1/"),
    "zerobounce": ("GET", "/v2/validate"),
    "pdl": ("POST", "/v5/person/enrich"),
    "hunter": ("GET", "/v2/email-finder"),
}


def example(vendor: str, label: str) -> Example:
    for ex in EXAMPLES:
        if ex.vendor == vendor and ex.label == label:
            return ex
    raise KeyError(f"{vendor}/{label}")


class VendorServer:
    """A local HTTP server speaking the four vendors' APIs.

    Which documented answer a lead gets is told by a marker in the lead: the
    email's local part `<vendor>-<label>` (for verification) or the last name
    (for enrichment), e.g. `debounce-unknown.zerobounce-valid@acme.com` or
    last name `pdl-not-found.hunter-found`. A vendor with no marker answers its
    first example. Every request is recorded (`calls`), keys included, so
    a test can check what was sent.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> VendorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, vendor: str, text: str) -> Example:
        for marker in text.replace("@", ".").split("."):
            name, _, label = marker.partition("-")
            if name == vendor and label:
                return example(vendor, label)
        return next(ex for ex in EXAMPLES if ex.vendor == vendor)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                vendor = next(
                    (v for v, (m, p) in PATHS.items() if m == self.command and p == url.path), None
                )
                server.calls.append(
                    {"vendor": vendor, "query": query, "body": body, "headers": dict(self.headers)}
                )
                if vendor is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                text = " ".join(
                    str(x)
                    for x in (
                        query.get("email"),
                        query.get("last_name"),
                        body.get("email"),
                        body.get("last_name"),
                    )
                    if x
                )
                ex = server.answer(vendor, text)
                payload = json.dumps(ex.body).encode() if ex.body is not None else b""
                self.send_response(ex.status)
                self.send_header("content-type", "application/json")
                for name, value in ex.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve
            do_POST = _serve

        return Handler
