"""The providers a job pays tokens for: AI generation, lead enrichment, email verification.

Charged on search, not on success (SPEC section 3). Every provider call ends
in one of two ways:

- it returns a `SearchResult`: the search happened, whatever it found
  (`FOUND`, `NOT_FOUND`, `INVALID`, or an empty model answer), so the job
  captures its hold;
- it raises `ProviderFailure`: the search did not happen. `retryable=True`
  (timeout, connection error, HTTP 408/409/425/429/5xx) lets the caller retry
  with the same hold; `retryable=False` (the provider refused the request,
  e.g. HTTP 400/401, or answered 2xx with something that is not the expected
  JSON) means retrying is pointless and the hold should be released.

Providers never retry themselves: the arq job retries with backoff and keeps
its hold. Reasons are one line and never contain an API key.

Real providers speak HTTP on one shared `httpx.AsyncClient`; when a
provider's base URL is not configured, `build_providers` uses an offline,
deterministic sandbox (`sandbox=True`) instead. Everything a sandbox returns is
derived from a sha256 of its input, so the same input gives the same output.

Sandbox magic markers, matched case-insensitively as substrings: against the
sequence prompt for AI sequences; against the lead's email, company_domain and
linkedin_url for icebreakers, enrichment and the two failure markers of verify;
against the email alone for verify's ``invalid``/``unknown``/``risky``:

=================  ==========================================================
``providerdown``   every provider raises ``ProviderFailure(retryable=True,
                   "sandbox: provider unavailable")``, every time
``rejected``       every provider raises ``ProviderFailure(retryable=False,
                   "sandbox: request rejected")``
``notfound``       enrich -> ``NOT_FOUND``; AI -> ``NOT_FOUND`` with an empty
                   answer (``{"raw": ""}``)
``invalid``        verify -> ``INVALID`` (status ``undeliverable``)
``unknown``        verify -> ``NOT_FOUND`` (status ``unknown``)
``risky``          verify -> ``FOUND`` (status ``risky``)
=================  ==========================================================

``providerdown`` wins over ``rejected``, which wins over the outcome markers.
Otherwise: enrich -> ``FOUND`` with plausible fake data (job title, phone in
the fictional 555-01xx range, company from the domain), verify -> ``FOUND``
(status ``deliverable``), AI sequence -> 3 steps built from the prompt, AI
icebreaker -> one line naming the lead's first name and company. The sandbox
verifier, like the real one, refuses (non-retryable) a lead without an email.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, cast

import httpx

from runtime.config import Settings
from worker.payloads import IcebreakerPayload, Lead, SequencePayload


class Outcome(StrEnum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    INVALID = "invalid"


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


@dataclass(frozen=True)
class Providers:
    ai: AIProvider
    enrich: EnrichProvider
    verify: VerifyProvider


def build_providers(settings: Settings, http: httpx.AsyncClient) -> Providers:
    """Real HTTP providers where a base URL is configured, sandboxes otherwise."""
    timeout = settings.provider_timeout_seconds
    ai: AIProvider = (
        OpenAIChatProvider(
            settings.ai_base_url, settings.ai_api_key, settings.ai_model, http, timeout=timeout
        )
        if settings.ai_base_url
        else SandboxAIProvider()
    )
    enrich: EnrichProvider = (
        HttpEnrichProvider(settings.enrich_base_url, settings.enrich_api_key, http, timeout=timeout)
        if settings.enrich_base_url
        else SandboxEnrichProvider()
    )
    verify: VerifyProvider = (
        HttpVerifyProvider(settings.verify_base_url, settings.verify_api_key, http, timeout=timeout)
        if settings.verify_base_url
        else SandboxVerifyProvider()
    )
    if settings.sandbox_latency_ms:
        delay = settings.sandbox_latency_ms / 1000
        if ai.sandbox:
            ai = cast(AIProvider, _Latency(ai, delay))
        if enrich.sandbox:
            enrich = cast(EnrichProvider, _Latency(enrich, delay))
        if verify.sandbox:
            verify = cast(VerifyProvider, _Latency(verify, delay))
    return Providers(ai=ai, enrich=enrich, verify=verify)


class _Latency:
    """A sandbox that takes its time, as a real provider does (demo, crash tests)."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds
        self.name = inner.name
        self.sandbox = True

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._inner, attr)
        if not asyncio.iscoroutinefunction(target):
            return target

        async def slow(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(self._seconds)
            return await target(*args, **kwargs)

        return slow


# --------------------------------------------------------------------------- HTTP

# Statuses after which the request may well succeed later: the search did not happen.
_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
_REASON_MAX = 200


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _REASON_MAX else line[: _REASON_MAX - 3] + "..."


class _HttpProvider:
    """Shared request handling: status and exception mapping, key scrubbing."""

    name: str
    sandbox: bool = False

    def __init__(
        self, base_url: str, api_key: str | None, http: httpx.AsyncClient, *, timeout: float = 20.0
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._http = http
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._base_url!r})"

    def _fail(self, reason: str, *, retryable: bool) -> ProviderFailure:
        if self._api_key:
            reason = reason.replace(self._api_key, "***")
        return ProviderFailure(self.name, _one_line(reason), retryable=retryable)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _post(
        self, path: str, body: dict[str, Any], *, accept: frozenset[int] = frozenset()
    ) -> httpx.Response:
        """POST and return a 2xx response (or one whose status is in `accept`).

        Anything else raises `ProviderFailure`; nothing is retried here.
        """
        try:
            response = await self._http.post(
                f"{self._base_url}{path}",
                json=body,
                headers=self._headers(),
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            kind = type(exc).__name__.removesuffix("Timeout").lower() or "request"
            raise self._fail(f"timeout after {self._timeout:g}s ({kind})", retryable=True) from None
        except httpx.TransportError as exc:
            detail = str(exc) or type(exc).__name__
            raise self._fail(f"unreachable: {detail}", retryable=True) from None
        except httpx.HTTPError as exc:  # e.g. DecodingError, TooManyRedirects
            detail = str(exc) or type(exc).__name__
            raise self._fail(f"bad response: {detail}", retryable=False) from None
        status = response.status_code
        if response.is_success or status in accept:
            return response
        retryable = status in _RETRYABLE_STATUSES or status >= 500
        raise self._fail(f"HTTP {status}", retryable=retryable)

    def _json_object(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise self._fail(
                f"bad response: HTTP {response.status_code} body is not JSON", retryable=False
            ) from None
        if not isinstance(body, dict):
            raise self._fail("bad response: body is not a JSON object", retryable=False)
        return body

    def _result(self, outcome: Outcome, data: dict[str, Any]) -> SearchResult:
        return SearchResult(outcome=outcome, data=data, provider=self.name, sandbox=False)


_SEQUENCE_SYSTEM = (
    "You write cold outreach email sequences for sales teams. Answer only with a JSON "
    'object of the form {"steps": [{"subject": string, "body": string}, ...]}, one '
    "element per email, in sending order (3 steps unless the brief says otherwise)."
)
_ICEBREAKER_SYSTEM = (
    "You write the opening line of a cold email: one short, friendly, specific sentence "
    'about the lead. Answer only with a JSON object of the form {"icebreaker": string}.'
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


class OpenAIChatProvider(_HttpProvider):
    """Any OpenAI-compatible chat-completions endpoint (base URL ends in /v1)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        http: httpx.AsyncClient,
        *,
        timeout: float = 20.0,
    ) -> None:
        super().__init__(base_url, api_key, http, timeout=timeout)
        self.name = "openai-chat"
        self.model = model

    async def sequence(self, payload: SequencePayload) -> SearchResult:
        user = payload.prompt
        if payload.model_extra:
            user += "\n\nContext (JSON):\n" + json.dumps(payload.model_extra, default=str)
        answer = await self._complete(_SEQUENCE_SYSTEM, user)
        if isinstance(answer, str):
            return self._result(Outcome.NOT_FOUND, {"raw": answer})
        steps = _steps(answer.get("steps"))
        if not steps:
            return self._result(Outcome.NOT_FOUND, {"raw": json.dumps(answer)})
        return self._result(Outcome.FOUND, {"steps": steps})

    async def icebreaker(self, payload: IcebreakerPayload) -> SearchResult:
        context: dict[str, Any] = {"lead": payload.lead.model_dump(mode="json", exclude_none=True)}
        context.update(payload.model_extra or {})
        user = "Write an icebreaker for this lead:\n" + json.dumps(context, default=str)
        answer = await self._complete(_ICEBREAKER_SYSTEM, user)
        if isinstance(answer, str):
            return self._result(Outcome.NOT_FOUND, {"raw": answer})
        line = answer.get("icebreaker")
        if not isinstance(line, str) or not line.strip():
            return self._result(Outcome.NOT_FOUND, {"raw": json.dumps(answer)})
        return self._result(Outcome.FOUND, {"icebreaker": line.strip()})

    async def _complete(self, system: str, user: str) -> dict[str, Any] | str:
        """The model's JSON object, or its raw text when it is empty or not a JSON object.

        Either way the model ran: the tokens are spent.
        """
        response = await self._post(
            "/chat/completions",
            {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user},
                ],
                "response_format": {"type": "json_object"},
            },
        )
        body = self._json_object(response)
        choices = body.get("choices")
        message = (
            choices[0].get("message")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict)
            else None
        )
        if not isinstance(message, dict):
            raise self._fail("bad response: no choices[0].message", retryable=False)
        content = message.get("content")
        raw = content if isinstance(content, str) else ""
        try:
            parsed = json.loads(_FENCE.sub("", raw.strip()))
        except ValueError:
            return raw
        return parsed if isinstance(parsed, dict) else raw


def _steps(value: Any) -> list[dict[str, str]]:
    """The well-formed steps of a model's answer (empty if there are none)."""
    if not isinstance(value, list):
        return []
    steps = []
    for item in value:
        if not isinstance(item, dict):
            continue
        subject, body = item.get("subject"), item.get("body")
        if isinstance(subject, str) and isinstance(body, str) and (subject or body):
            steps.append({"subject": subject, "body": body})
    return steps


class HttpEnrichProvider(_HttpProvider):
    """POST {base}/v1/enrich with the lead; `{"found": true, "person": {...}}` or 404."""

    name = "http-enrich"

    async def enrich(self, lead: Lead) -> SearchResult:
        response = await self._post(
            "/v1/enrich",
            lead.model_dump(mode="json", exclude_none=True),
            accept=frozenset({404}),
        )
        if response.status_code == 404:
            return self._result(Outcome.NOT_FOUND, {})
        body = self._json_object(response)
        found = body.get("found")
        if found is False:
            return self._result(Outcome.NOT_FOUND, {})
        person = body.get("person")
        if found is not True or not isinstance(person, dict):
            raise self._fail(
                'bad response: expected {"found": bool, "person": {...}}', retryable=False
            )
        return self._result(Outcome.FOUND, person)


_VERIFY_OUTCOMES = {
    "deliverable": Outcome.FOUND,
    "risky": Outcome.FOUND,
    "undeliverable": Outcome.INVALID,
    "unknown": Outcome.NOT_FOUND,
}


class HttpVerifyProvider(_HttpProvider):
    """POST {base}/v1/verify `{"email": ...}` -> `{"status": ...}`."""

    name = "http-verify"

    async def verify(self, lead: Lead) -> SearchResult:
        if not lead.email:
            raise self._fail("lead has no email to verify", retryable=False)
        response = await self._post("/v1/verify", {"email": lead.email})
        status = self._json_object(response).get("status")
        outcome = _VERIFY_OUTCOMES.get(status) if isinstance(status, str) else None
        if outcome is None:
            raise self._fail(
                f"bad response: unexpected status {str(status)[:40]!r}", retryable=False
            )
        return self._result(outcome, {"email": lead.email, "status": status})


# ------------------------------------------------------------------------ Sandbox

_PROVIDER_DOWN = "providerdown"
_REJECTED = "rejected"

_JOB_TITLES = (
    "Head of Sales",
    "VP of Marketing",
    "Sales Development Representative",
    "Account Executive",
    "Chief Revenue Officer",
    "Growth Manager",
    "Customer Success Lead",
    "Founder & CEO",
    "Head of Partnerships",
    "Marketing Operations Manager",
)
_FIRST_NAMES = ("Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie")
_LAST_NAMES = ("Martin", "Bernard", "Garcia", "Nguyen", "Smith", "Rossi", "Keller", "Dubois")
_COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka")
_SUBJECTS = (
    ("Quick question", "Following up", "Should I close your file?"),
    ("An idea for your team", "Did this land?", "Last note from me"),
    ("Worth a chat?", "Re: worth a chat?", "Closing the loop"),
)
_OPENERS = (
    "Hi {first}, I came across {company} and had to reach out.",
    "Hi {first}, congrats on everything {company} has been shipping lately.",
    "Hi {first}, a colleague mentioned {company} and I was curious.",
    "Hi {first}, I saw {company} is growing fast.",
)


def _digest(value: Any) -> bytes:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest()


def _pick(options: tuple[Any, ...], digest: bytes, index: int) -> Any:
    return options[digest[index] % len(options)]


def _lead_text(lead: Lead) -> str:
    return " ".join(v for v in (lead.email, lead.company_domain, lead.linkedin_url) if v).lower()


def _lead_domain(lead: Lead) -> str | None:
    if lead.company_domain:
        return lead.company_domain.lower()
    if lead.email and "@" in lead.email:
        return lead.email.rsplit("@", 1)[1].lower()
    return None


def _company_name(domain: str) -> str:
    label = domain.removeprefix("www.").split(".")[0]
    return " ".join(part.capitalize() for part in re.split(r"[-_]", label) if part) or domain


def _sandbox_failures(provider: str, text: str) -> None:
    if _PROVIDER_DOWN in text:
        raise ProviderFailure(provider, "sandbox: provider unavailable", retryable=True)
    if _REJECTED in text:
        raise ProviderFailure(provider, "sandbox: request rejected", retryable=False)


class SandboxAIProvider:
    """Offline AI: templated, deterministic text built from the input."""

    name = "sandbox-ai"
    sandbox = True

    def _result(self, outcome: Outcome, data: dict[str, Any]) -> SearchResult:
        return SearchResult(outcome=outcome, data=data, provider=self.name, sandbox=True)

    async def sequence(self, payload: SequencePayload) -> SearchResult:
        text = payload.prompt.lower()
        _sandbox_failures(self.name, text)
        if "notfound" in text:
            return self._result(Outcome.NOT_FOUND, {"raw": ""})
        digest = _digest(payload.model_dump(mode="json"))
        subjects = _pick(_SUBJECTS, digest, 0)
        brief = _one_line(payload.prompt)
        bodies = (
            f"Hi there,\n\n{brief}\n\nWould a 15-minute call next week make sense?",
            f"Hi again,\n\nJust bringing this back to the top of your inbox: {brief}",
            "Hi,\n\nI haven't heard back, so I'll assume the timing isn't right. "
            "Feel free to reach out whenever it is.",
        )
        steps = [{"subject": s, "body": b} for s, b in zip(subjects, bodies, strict=True)]
        return self._result(Outcome.FOUND, {"steps": steps})

    async def icebreaker(self, payload: IcebreakerPayload) -> SearchResult:
        lead = payload.lead
        text = _lead_text(lead)
        _sandbox_failures(self.name, text)
        if "notfound" in text:
            return self._result(Outcome.NOT_FOUND, {"raw": ""})
        digest = _digest(payload.model_dump(mode="json"))
        first = lead.first_name or "there"
        domain = _lead_domain(lead)
        company = _company_name(domain) if domain else "your company"
        line = _pick(_OPENERS, digest, 0).format(first=first, company=company)
        return self._result(Outcome.FOUND, {"icebreaker": line})


class SandboxEnrichProvider:
    """Offline enrichment: plausible fake person data derived from the lead."""

    name = "sandbox-enrich"
    sandbox = True

    async def enrich(self, lead: Lead) -> SearchResult:
        text = _lead_text(lead)
        _sandbox_failures(self.name, text)
        if "notfound" in text:
            return SearchResult(Outcome.NOT_FOUND, {}, self.name, sandbox=True)
        digest = _digest(lead.model_dump(mode="json"))
        first = lead.first_name or _pick(_FIRST_NAMES, digest, 0)
        last = lead.last_name or _pick(_LAST_NAMES, digest, 1)
        domain = _lead_domain(lead) or f"{_pick(_COMPANIES, digest, 2).lower()}.example"
        email = lead.email or f"{first}.{last}@{domain}".lower().replace(" ", "")
        slug = re.sub(r"[^a-z0-9]+", "-", f"{first} {last}".lower()).strip("-")
        person = {
            "email": email,
            "phone": f"+1-{200 + digest[3] % 800:03d}-555-01{digest[4] % 100:02d}",
            "first_name": first,
            "last_name": last,
            "job_title": _pick(_JOB_TITLES, digest, 5),
            "company": _company_name(domain),
            "company_domain": domain,
            "linkedin_url": lead.linkedin_url or f"https://www.linkedin.com/in/{slug}",
        }
        return SearchResult(Outcome.FOUND, person, self.name, sandbox=True)


class SandboxVerifyProvider:
    """Offline verification: markers in the email decide the status."""

    name = "sandbox-verify"
    sandbox = True

    async def verify(self, lead: Lead) -> SearchResult:
        if not lead.email:
            raise ProviderFailure(self.name, "lead has no email to verify", retryable=False)
        text = _lead_text(lead)
        _sandbox_failures(self.name, text)
        email = lead.email.lower()
        if "invalid" in email:
            status = "undeliverable"
        elif "unknown" in email:
            status = "unknown"
        elif "risky" in email:
            status = "risky"
        else:
            status = "deliverable"
        return SearchResult(
            _VERIFY_OUTCOMES[status], {"email": lead.email, "status": status}, self.name, True
        )
