"""Offline, deterministic providers (see the package docstring for their magic markers)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

from pydantic import BaseModel

from worker.payloads import IcebreakerPayload, Lead, SequencePayload
from worker.providers.base import VERIFY_OUTCOMES, Outcome, ProviderFailure, SearchResult, one_line

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


_SLUG_GAPS = re.compile(r"[^a-z0-9]+")
_LABEL_PARTS = re.compile(r"[-_]")


def _digest(payload: BaseModel) -> bytes:
    """The payload's fingerprint: the same payload always gets the same fake answer."""
    return hashlib.sha256(payload.model_dump_json().encode()).digest()


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
    return " ".join(part.capitalize() for part in _LABEL_PARTS.split(label) if part) or domain


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
        digest = _digest(payload)
        subjects = _pick(_SUBJECTS, digest, 0)
        brief = one_line(payload.prompt)
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
        digest = _digest(payload)
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
        digest = _digest(lead)
        first = lead.first_name or _pick(_FIRST_NAMES, digest, 0)
        last = lead.last_name or _pick(_LAST_NAMES, digest, 1)
        domain = _lead_domain(lead) or f"{_pick(_COMPANIES, digest, 2).lower()}.example"
        email = lead.email or f"{first}.{last}@{domain}".lower().replace(" ", "")
        slug = _SLUG_GAPS.sub("-", f"{first} {last}".lower()).strip("-")
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
            VERIFY_OUTCOMES[status], {"email": lead.email, "status": status}, self.name, True
        )


class Latency:
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
