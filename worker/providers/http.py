"""Real providers over HTTP, on one shared `httpx.AsyncClient`; they never retry
themselves (the arq job does, keeping its hold)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import structlog

from worker.payloads import IcebreakerPayload, Lead, SequencePayload
from worker.providers.base import VERIFY_OUTCOMES, Outcome, ProviderFailure, SearchResult, one_line

log = structlog.get_logger("tokens.worker")

# Statuses after which the request may well succeed later: the search did not happen.
_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


class _Unrecognized(Exception):
    """A 2xx answer we cannot read. The provider ran the search (and bills it), so
    it is a search that happened: charged, marked unrecognized, logged."""

    def __init__(self, why: str, response: httpx.Response) -> None:
        super().__init__(why)
        self.why = why
        self.status = response.status_code
        self.raw = response.text


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
        return ProviderFailure(self.name, one_line(reason), retryable=retryable)

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
            raise _Unrecognized("body is not JSON", response) from None
        if not isinstance(body, dict):
            raise _Unrecognized("body is not a JSON object", response)
        return body

    def _unrecognized(self, exc: _Unrecognized) -> SearchResult:
        raw = exc.raw.replace(self._api_key, "***") if self._api_key else exc.raw
        raw = one_line(raw)
        log.warning(
            "provider_answer_unrecognized",
            provider=self.name,
            http_status=exc.status,
            why=exc.why,
            raw=raw,
        )
        data = {"unrecognized": True, "http_status": exc.status, "why": exc.why, "raw": raw}
        return self._result(Outcome.UNRECOGNIZED, data)

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
        try:
            return await self._sequence(payload)
        except _Unrecognized as exc:
            return self._unrecognized(exc)

    async def icebreaker(self, payload: IcebreakerPayload) -> SearchResult:
        try:
            return await self._icebreaker(payload)
        except _Unrecognized as exc:
            return self._unrecognized(exc)

    async def _sequence(self, payload: SequencePayload) -> SearchResult:
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

    async def _icebreaker(self, payload: IcebreakerPayload) -> SearchResult:
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
            raise _Unrecognized("no choices[0].message", response)
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
        try:
            return await self._enrich(lead)
        except _Unrecognized as exc:
            return self._unrecognized(exc)

    async def _enrich(self, lead: Lead) -> SearchResult:
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
            raise _Unrecognized('expected {"found": bool, "person": {...}}', response)
        return self._result(Outcome.FOUND, person)


class HttpVerifyProvider(_HttpProvider):
    """POST {base}/v1/verify `{"email": ...}` -> `{"status": ...}`."""

    name = "http-verify"

    async def verify(self, lead: Lead) -> SearchResult:
        if not lead.email:
            raise self._fail("lead has no email to verify", retryable=False)
        response = await self._post("/v1/verify", {"email": lead.email})
        try:
            status = self._json_object(response).get("status")
            outcome = VERIFY_OUTCOMES.get(status) if isinstance(status, str) else None
            if outcome is None:
                raise _Unrecognized(f"unexpected status {str(status)[:40]!r}", response)
        except _Unrecognized as exc:
            return self._unrecognized(exc)
        return self._result(outcome, {"email": lead.email, "status": status})
