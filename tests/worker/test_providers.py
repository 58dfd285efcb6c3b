"""Providers: every outcome of every HTTP provider, and the deterministic sandboxes.

Pure tests: HTTP is mocked with respx, no database.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import respx

from runtime.config import Settings
from worker.payloads import IcebreakerPayload, Lead, SequencePayload
from worker.providers import (
    HttpEnrichProvider,
    HttpVerifyProvider,
    OpenAIChatProvider,
    Outcome,
    ProviderFailure,
    SandboxAIProvider,
    SandboxEnrichProvider,
    SandboxVerifyProvider,
    SearchResult,
    build_providers,
)

AI_BASE = "https://ai.test/v1"
ENRICH_BASE = "https://enrich.test"
VERIFY_BASE = "https://verify.test"
KEY = "sk-test-SECRET-0123456789"

LEAD = Lead(email="jane@acme.com", first_name="Jane", last_name="Doe", company_domain="acme.com")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def chat(content: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }


# --------------------------------------------------------------------- OpenAI


async def test_ai_sequence_found_and_request(http: httpx.AsyncClient) -> None:
    steps = [{"subject": f"S{i}", "body": f"B{i}"} for i in range(3)]
    with respx.mock(base_url=AI_BASE) as mock:
        route = mock.post("/chat/completions").respond(200, json=chat(json.dumps({"steps": steps})))
        provider = OpenAIChatProvider(AI_BASE, KEY, "gpt-test", http, timeout=5)
        result = await provider.sequence(
            SequencePayload.model_validate({"prompt": "Sell widgets to CFOs", "tone": "casual"})
        )
    assert result == SearchResult(Outcome.FOUND, {"steps": steps}, "openai-chat", sandbox=False)
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(request.content)
    assert body["model"] == "gpt-test"
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "JSON" in body["messages"][0]["content"]
    assert "Sell widgets to CFOs" in body["messages"][1]["content"]
    assert "casual" in body["messages"][1]["content"]


async def test_ai_icebreaker_found_and_request(http: httpx.AsyncClient) -> None:
    with respx.mock(base_url=AI_BASE) as mock:
        route = mock.post("/chat/completions").respond(
            200, json=chat('```json\n{"icebreaker": "  Hi Jane, love Acme!  "}\n```')
        )
        provider = OpenAIChatProvider(AI_BASE, KEY, "gpt-test", http)
        result = await provider.icebreaker(IcebreakerPayload(lead=LEAD))
    assert result.outcome is Outcome.FOUND
    assert result.data == {"icebreaker": "Hi Jane, love Acme!"}
    user = json.loads(route.calls.last.request.content)["messages"][1]["content"]
    assert "jane@acme.com" in user


@pytest.mark.parametrize(
    "content",
    [None, "", "   ", "not json at all", "[1, 2]", '{"steps": []}', '{"steps": "nope"}'],
)
async def test_ai_sequence_empty_answer_is_not_found(
    http: httpx.AsyncClient, content: str | None
) -> None:
    with respx.mock(base_url=AI_BASE) as mock:
        mock.post("/chat/completions").respond(200, json=chat(content))
        result = await OpenAIChatProvider(AI_BASE, KEY, "m", http).sequence(
            SequencePayload(prompt="x")
        )
    assert result.outcome is Outcome.NOT_FOUND
    assert isinstance(result.data["raw"], str)
    if not (content or "").startswith("{"):
        assert result.data["raw"] == (content or "")


async def test_ai_icebreaker_empty_answer_is_not_found(http: httpx.AsyncClient) -> None:
    with respx.mock(base_url=AI_BASE) as mock:
        mock.post("/chat/completions").respond(200, json=chat('{"icebreaker": ""}'))
        result = await OpenAIChatProvider(AI_BASE, KEY, "m", http).icebreaker(
            IcebreakerPayload(lead=LEAD)
        )
    assert result.outcome is Outcome.NOT_FOUND


async def test_ai_without_key_sends_no_auth(http: httpx.AsyncClient) -> None:
    with respx.mock(base_url=AI_BASE) as mock:
        route = mock.post("/chat/completions").respond(200, json=chat('{"icebreaker": "Hi"}'))
        await OpenAIChatProvider(AI_BASE, None, "m", http).icebreaker(IcebreakerPayload(lead=LEAD))
    assert "authorization" not in route.calls.last.request.headers


@pytest.mark.parametrize(
    "body", [{"choices": []}, {"error": "x"}, {"choices": [{"text": "hi"}]}, [1, 2]]
)
async def test_ai_malformed_envelope_is_a_search_unrecognized(
    http: httpx.AsyncClient, body: Any
) -> None:
    """The model ran (and is billed): a 2xx we cannot read is charged, never released."""
    with respx.mock(base_url=AI_BASE) as mock:
        mock.post("/chat/completions").respond(200, json=body)
        result = await OpenAIChatProvider(AI_BASE, KEY, "m", http).sequence(
            SequencePayload(prompt="x")
        )
    assert result.outcome is Outcome.UNRECOGNIZED
    assert result.data["unrecognized"] is True and result.data["http_status"] == 200
    assert result.data["raw"] == json.dumps(body, separators=(",", ":"))


# -------------------------------------------------------------------- Enrich


async def test_enrich_found_and_request(http: httpx.AsyncClient) -> None:
    person = {"email": "jane@acme.com", "phone": "+1", "job_title": "CEO", "company": "Acme"}
    with respx.mock(base_url=ENRICH_BASE) as mock:
        route = mock.post("/v1/enrich").respond(200, json={"found": True, "person": person})
        provider = HttpEnrichProvider(ENRICH_BASE + "/", KEY, http)
        result = await provider.enrich(LEAD)
    assert result == SearchResult(Outcome.FOUND, person, "http-enrich", sandbox=False)
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {
        "email": "jane@acme.com",
        "first_name": "Jane",
        "last_name": "Doe",
        "company_domain": "acme.com",
    }


@pytest.mark.parametrize(
    ("status", "body"), [(200, {"found": False}), (404, {"error": "no match"}), (404, None)]
)
async def test_enrich_not_found(http: httpx.AsyncClient, status: int, body: Any) -> None:
    with respx.mock(base_url=ENRICH_BASE) as mock:
        mock.post("/v1/enrich").respond(status, json=body)
        result = await HttpEnrichProvider(ENRICH_BASE, KEY, http).enrich(LEAD)
    assert result.outcome is Outcome.NOT_FOUND
    assert result.data == {}


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>oops</html>"),
        httpx.Response(200, json=[]),
        httpx.Response(200, json={"found": True}),
        httpx.Response(200, json={"found": True, "person": "Jane"}),
        httpx.Response(200, json={"found": "yes", "person": {}}),
        httpx.Response(200, json={}),
        httpx.Response(200, json={"found": True, "person": None}),
        httpx.Response(201, json={"status": "catch_all", "echo": KEY}),
    ],
)
async def test_enrich_unreadable_2xx_is_a_search(
    http: httpx.AsyncClient, response: httpx.Response
) -> None:
    """The provider searched: the lead is charged, marked unrecognized, never released."""
    with respx.mock(base_url=ENRICH_BASE) as mock:
        mock.post("/v1/enrich").mock(return_value=response)
        result = await HttpEnrichProvider(ENRICH_BASE, KEY, http).enrich(LEAD)
    assert result.outcome is Outcome.UNRECOGNIZED
    assert result.provider == "http-enrich" and not result.sandbox
    assert result.data["unrecognized"] is True
    assert result.data["http_status"] == response.status_code
    assert KEY not in json.dumps(result.data)


# -------------------------------------------------------------------- Verify


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("deliverable", Outcome.FOUND),
        ("risky", Outcome.FOUND),
        ("undeliverable", Outcome.INVALID),
        ("unknown", Outcome.NOT_FOUND),
    ],
)
async def test_verify_outcomes(http: httpx.AsyncClient, status: str, outcome: Outcome) -> None:
    with respx.mock(base_url=VERIFY_BASE) as mock:
        route = mock.post("/v1/verify").respond(200, json={"status": status, "score": 0.9})
        result = await HttpVerifyProvider(VERIFY_BASE, KEY, http).verify(LEAD)
    assert result == SearchResult(
        outcome, {"email": "jane@acme.com", "status": status}, "http-verify", sandbox=False
    )
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {"email": "jane@acme.com"}


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text=""),
        httpx.Response(200, json={"status": "maybe"}),
        httpx.Response(200, json={"status": 1}),
        httpx.Response(200, json={"result": "deliverable"}),
        httpx.Response(200, json={"status": "catch_all"}),
    ],
)
async def test_verify_unreadable_2xx_is_a_search(
    http: httpx.AsyncClient, response: httpx.Response
) -> None:
    with respx.mock(base_url=VERIFY_BASE) as mock:
        mock.post("/v1/verify").mock(return_value=response)
        result = await HttpVerifyProvider(VERIFY_BASE, KEY, http).verify(LEAD)
    assert result.outcome is Outcome.UNRECOGNIZED
    assert result.data["unrecognized"] is True


async def test_verify_without_email_is_refused_without_a_request(
    http: httpx.AsyncClient,
) -> None:
    lead = Lead(linkedin_url="https://www.linkedin.com/in/jane")
    with respx.mock(base_url=VERIFY_BASE, assert_all_called=False) as mock:
        route = mock.post("/v1/verify").respond(200, json={"status": "deliverable"})
        with pytest.raises(ProviderFailure) as info:
            await HttpVerifyProvider(VERIFY_BASE, KEY, http).verify(lead)
    assert not route.called
    assert not info.value.retryable


# ------------------------------------------- Failures, common to all three

Call = Callable[[httpx.AsyncClient], Awaitable[SearchResult]]


def _ai(http: httpx.AsyncClient) -> Awaitable[SearchResult]:
    return OpenAIChatProvider(AI_BASE, KEY, "m", http, timeout=7.5).sequence(
        SequencePayload(prompt="x")
    )


def _enrich(http: httpx.AsyncClient) -> Awaitable[SearchResult]:
    return HttpEnrichProvider(ENRICH_BASE, KEY, http, timeout=7.5).enrich(LEAD)


def _verify(http: httpx.AsyncClient) -> Awaitable[SearchResult]:
    return HttpVerifyProvider(VERIFY_BASE, KEY, http, timeout=7.5).verify(LEAD)


PROVIDERS = [
    pytest.param(AI_BASE, "/chat/completions", _ai, id="ai"),
    pytest.param(ENRICH_BASE, "/v1/enrich", _enrich, id="enrich"),
    pytest.param(VERIFY_BASE, "/v1/verify", _verify, id="verify"),
]


async def _failure(
    http: httpx.AsyncClient, base: str, path: str, call: Call, **route: Any
) -> ProviderFailure:
    with respx.mock(base_url=base) as mock:
        mock.post(path).mock(**route)
        with pytest.raises(ProviderFailure) as info:
            await call(http)
    failure = info.value
    assert KEY not in failure.reason
    assert KEY not in str(failure)
    assert "\n" not in failure.reason
    return failure


@pytest.mark.parametrize(("base", "path", "call"), PROVIDERS)
@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
async def test_retryable_statuses(
    http: httpx.AsyncClient, base: str, path: str, call: Call, status: int
) -> None:
    response = httpx.Response(status, json={"error": f"bad key {KEY}"})
    failure = await _failure(http, base, path, call, return_value=response)
    assert failure.retryable
    assert failure.reason == f"HTTP {status}"


@pytest.mark.parametrize(("base", "path", "call"), PROVIDERS)
@pytest.mark.parametrize("status", [400, 401, 403, 422])
async def test_refused_statuses_are_not_retryable(
    http: httpx.AsyncClient, base: str, path: str, call: Call, status: int
) -> None:
    response = httpx.Response(status, json={"error": f"Incorrect API key provided: {KEY}"})
    failure = await _failure(http, base, path, call, return_value=response)
    assert not failure.retryable
    assert failure.reason == f"HTTP {status}"


@pytest.mark.parametrize(("base", "path", "call"), [PROVIDERS[0], PROVIDERS[2]])
async def test_404_is_a_refusal_except_for_enrich(
    http: httpx.AsyncClient, base: str, path: str, call: Call
) -> None:
    failure = await _failure(http, base, path, call, return_value=httpx.Response(404))
    assert not failure.retryable


@pytest.mark.parametrize(("base", "path", "call"), PROVIDERS)
@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.ConnectTimeout])
async def test_timeout_is_retryable(
    http: httpx.AsyncClient, base: str, path: str, call: Call, error: type[Exception]
) -> None:
    failure = await _failure(http, base, path, call, side_effect=error)
    assert failure.retryable
    assert failure.reason.startswith("timeout after 7.5s")


@pytest.mark.parametrize(("base", "path", "call"), PROVIDERS)
async def test_connection_error_is_retryable(
    http: httpx.AsyncClient, base: str, path: str, call: Call
) -> None:
    error = httpx.ConnectError(f"[Errno 111] Connection refused (key={KEY})")
    failure = await _failure(http, base, path, call, side_effect=error)
    assert failure.retryable
    assert failure.reason.startswith("unreachable: ")
    assert "Connection refused" in failure.reason


@pytest.mark.parametrize(("base", "path", "call"), PROVIDERS)
async def test_other_transport_errors_are_retryable(
    http: httpx.AsyncClient, base: str, path: str, call: Call
) -> None:
    failure = await _failure(http, base, path, call, side_effect=httpx.RemoteProtocolError)
    assert failure.retryable


# -------------------------------------------------------------- build_providers


async def test_build_providers_sandbox_by_default(http: httpx.AsyncClient) -> None:
    providers = build_providers(Settings(), http)
    assert isinstance(providers.ai, SandboxAIProvider)
    assert isinstance(providers.enrich, SandboxEnrichProvider)
    assert isinstance(providers.verify, SandboxVerifyProvider)
    assert providers.ai.sandbox and providers.enrich.sandbox and providers.verify.sandbox


async def test_build_providers_real_where_configured(http: httpx.AsyncClient) -> None:
    settings = Settings(
        ai_base_url=AI_BASE,
        ai_api_key=KEY,
        ai_model="gpt-x",
        enrich_base_url=ENRICH_BASE,
        enrich_api_key=KEY,
        provider_timeout_seconds=3,
    )
    providers = build_providers(settings, http)
    assert isinstance(providers.ai, OpenAIChatProvider)
    assert providers.ai.model == "gpt-x"
    assert isinstance(providers.enrich, HttpEnrichProvider)
    assert isinstance(providers.verify, SandboxVerifyProvider)
    assert not providers.ai.sandbox
    assert KEY not in repr(providers)
    with respx.mock(base_url=ENRICH_BASE) as mock:
        mock.post("/v1/enrich").mock(side_effect=httpx.ReadTimeout)
        with pytest.raises(ProviderFailure, match="timeout after 3s"):
            await providers.enrich.enrich(LEAD)


# -------------------------------------------------------------------- Sandbox


async def test_sandbox_enrich_is_deterministic() -> None:
    provider = SandboxEnrichProvider()
    lead = Lead(linkedin_url="https://www.linkedin.com/in/someone")
    first, second = await provider.enrich(lead), await provider.enrich(lead)
    assert first == second
    assert first.outcome is Outcome.FOUND
    assert first.sandbox and first.provider == "sandbox-enrich"
    assert {"email", "phone", "job_title", "company"} <= first.data.keys()
    other = await provider.enrich(Lead(linkedin_url="https://www.linkedin.com/in/other"))
    assert other.data != first.data


async def test_sandbox_enrich_keeps_what_it_knows() -> None:
    result = await SandboxEnrichProvider().enrich(LEAD)
    assert result.data["email"] == "jane@acme.com"
    assert result.data["first_name"] == "Jane"
    assert result.data["company"] == "Acme"
    assert result.data["company_domain"] == "acme.com"


@pytest.mark.parametrize(
    "lead",
    [
        Lead(email="someone@notfound.com"),
        Lead(email="NotFound.jane@acme.com"),
        Lead(last_name="Doe", company_domain="notfound.io"),
    ],
)
async def test_sandbox_enrich_not_found(lead: Lead) -> None:
    result = await SandboxEnrichProvider().enrich(lead)
    assert result.outcome is Outcome.NOT_FOUND


async def test_sandbox_provider_down_every_time() -> None:
    lead = Lead(email="providerdown@acme.com", first_name="Jane")
    calls: list[Callable[[], Awaitable[SearchResult]]] = [
        lambda: SandboxEnrichProvider().enrich(lead),
        lambda: SandboxVerifyProvider().verify(lead),
        lambda: SandboxAIProvider().icebreaker(IcebreakerPayload(lead=lead)),
        lambda: SandboxAIProvider().sequence(SequencePayload(prompt="Pitch ProviderDown Inc")),
    ]
    for call in calls:
        for _ in range(3):
            with pytest.raises(ProviderFailure) as info:
                await call()
            assert info.value.retryable
            assert info.value.reason == "sandbox: provider unavailable"


async def test_sandbox_rejected_is_not_retryable() -> None:
    lead = Lead(email="rejected@acme.com")
    for call in (SandboxEnrichProvider().enrich, SandboxVerifyProvider().verify):
        with pytest.raises(ProviderFailure) as info:
            await call(lead)
        assert not info.value.retryable
    with pytest.raises(ProviderFailure) as info:
        await SandboxAIProvider().sequence(SequencePayload(prompt="rejected"))
    assert not info.value.retryable


@pytest.mark.parametrize(
    ("email", "outcome", "status"),
    [
        ("jane@acme.com", Outcome.FOUND, "deliverable"),
        ("invalid.jane@acme.com", Outcome.INVALID, "undeliverable"),
        ("jane@unknown.org", Outcome.NOT_FOUND, "unknown"),
        ("risky@acme.com", Outcome.FOUND, "risky"),
    ],
)
async def test_sandbox_verify(email: str, outcome: Outcome, status: str) -> None:
    provider = SandboxVerifyProvider()
    result = await provider.verify(Lead(email=email))
    assert result == await provider.verify(Lead(email=email))
    assert result == SearchResult(
        outcome, {"email": email, "status": status}, "sandbox-verify", sandbox=True
    )


async def test_sandbox_verify_without_email() -> None:
    with pytest.raises(ProviderFailure) as info:
        await SandboxVerifyProvider().verify(Lead(linkedin_url="https://linkedin.com/in/x"))
    assert not info.value.retryable


async def test_sandbox_ai_sequence() -> None:
    provider = SandboxAIProvider()
    payload = SequencePayload(prompt="Sell our CRM to dentists in Lyon")
    result = await provider.sequence(payload)
    assert result == await provider.sequence(payload)
    assert result.outcome is Outcome.FOUND and result.sandbox
    assert result.provider == "sandbox-ai"
    steps = result.data["steps"]
    assert len(steps) == 3
    assert all(step["subject"] and step["body"] for step in steps)
    assert "dentists in Lyon" in steps[0]["body"]


async def test_sandbox_ai_icebreaker() -> None:
    provider = SandboxAIProvider()
    payload = IcebreakerPayload(lead=LEAD)
    result = await provider.icebreaker(payload)
    assert result == await provider.icebreaker(payload)
    line = result.data["icebreaker"]
    assert "Jane" in line and "Acme" in line
    assert "\n" not in line


async def test_sandbox_ai_empty_answer() -> None:
    result = await SandboxAIProvider().sequence(SequencePayload(prompt="notfound please"))
    assert result.outcome is Outcome.NOT_FOUND
    assert result.data == {"raw": ""}
