"""The providers a job pays tokens for: AI generation, lead enrichment, email verification.

Charged on search, not on success (README "How the ledger works"). Every provider call ends
in one of two ways:

- it returns a `SearchResult`: the search happened, whatever it found
  (`FOUND`, `NOT_FOUND`, `INVALID`, an empty model answer, or `UNRECOGNIZED`:
  a 2xx answer we cannot read, which the provider ran and bills all the
  same), so the job captures its hold;
- it raises `ProviderFailure`: the search did not happen. `retryable=True`
  (timeout, connection error, HTTP 408/409/425/429/5xx) lets the caller retry
  with the same hold; `retryable=False` (the provider refused the request,
  e.g. HTTP 400/401) means retrying is pointless and the hold should be
  released.
- `VendorsPaused`: every real vendor of a waterfall is paused (our key or
  our credits): the job waits in the queue, its hold kept, its try given back.

Real enrichment and verification vendors (DeBounce, ZeroBounce, People Data
Labs, Hunter) are asked in a configured waterfall (waterfall.py), each
vendor one module of `vendors/` with one table of its documented answers
(vendor.py).

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

from dataclasses import dataclass
from typing import Any, cast

import httpx

from runtime.config import Settings, vendor_names
from worker.providers.base import (
    AIProvider,
    EnrichProvider,
    Outcome,
    ProviderFailure,
    SearchResult,
    VendorsPaused,
    VerifyProvider,
)
from worker.providers.gate import Gate
from worker.providers.http import HttpEnrichProvider, HttpVerifyProvider, OpenAIChatProvider
from worker.providers.sandbox import (
    Latency,
    SandboxAIProvider,
    SandboxEnrichProvider,
    SandboxVerifyProvider,
)
from worker.providers.vendor import VendorClient
from worker.providers.waterfall import Waterfall

__all__ = [
    "AIProvider",
    "EnrichProvider",
    "HttpEnrichProvider",
    "HttpVerifyProvider",
    "OpenAIChatProvider",
    "Outcome",
    "ProviderFailure",
    "Providers",
    "SandboxAIProvider",
    "SandboxEnrichProvider",
    "SandboxVerifyProvider",
    "SearchResult",
    "VendorsPaused",
    "VerifyProvider",
    "Waterfall",
    "build_providers",
    "build_waterfall",
]


@dataclass(frozen=True)
class Providers:
    ai: AIProvider
    enrich: EnrichProvider
    verify: VerifyProvider


def build_waterfall(
    settings: Settings, action: str, http: httpx.AsyncClient, redis: Any
) -> Waterfall | None:
    """The action's waterfall of real vendors (TOKENS_<ACTION>_PROVIDERS), or None."""
    from worker.providers.vendors import VENDORS

    names = vendor_names(getattr(settings, f"{action}_providers"))
    if not names:
        return None
    if redis is None:
        raise ValueError("real vendors keep their limits in Redis: build them with one")
    clients = []
    for name in names:
        vendor = VENDORS[name]()
        config = settings.vendors[name]
        clients.append(
            VendorClient(
                vendor,
                config.api_key.get_secret_value(),
                (config.base_url or vendor.base_url).rstrip("/"),
                http,
                Gate(
                    redis,
                    name,
                    concurrency=vendor.concurrency,
                    rates=vendor.rates,
                    slot_ttl=settings.provider_timeout_seconds + 5,
                ),
                timeout=settings.provider_timeout_seconds,
                pause_seconds=settings.vendor_pause_seconds,
            )
        )
    return Waterfall(
        action,
        clients,
        min_confidence=getattr(settings, f"{action}_min_confidence"),
        stop_at_first_found=getattr(settings, f"{action}_stop_at_first_found"),
    )


def build_providers(settings: Settings, http: httpx.AsyncClient, redis: Any = None) -> Providers:
    """Real vendors where a waterfall is configured (they need `redis`, where their
    shared limits live), an HTTP provider where a base URL is, sandboxes otherwise."""
    timeout = settings.provider_timeout_seconds
    ai: AIProvider = (
        OpenAIChatProvider(
            settings.ai_base_url, settings.ai_api_key, settings.ai_model, http, timeout=timeout
        )
        if settings.ai_base_url
        else SandboxAIProvider()
    )
    enrich: EnrichProvider = build_waterfall(settings, "enrich", http, redis) or (
        HttpEnrichProvider(settings.enrich_base_url, settings.enrich_api_key, http, timeout=timeout)
        if settings.enrich_base_url
        else SandboxEnrichProvider()
    )
    verify: VerifyProvider = build_waterfall(settings, "verify", http, redis) or (
        HttpVerifyProvider(settings.verify_base_url, settings.verify_api_key, http, timeout=timeout)
        if settings.verify_base_url
        else SandboxVerifyProvider()
    )
    if settings.sandbox_latency_ms:
        delay = settings.sandbox_latency_ms / 1000
        if ai.sandbox:
            ai = cast(AIProvider, Latency(ai, delay))
        if enrich.sandbox:
            enrich = cast(EnrichProvider, Latency(enrich, delay))
        if verify.sandbox:
            verify = cast(VerifyProvider, Latency(verify, delay))
    return Providers(ai=ai, enrich=enrich, verify=verify)
