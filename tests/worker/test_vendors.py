"""Real vendors: every documented answer of DeBounce, ZeroBounce, People Data Labs
and Hunter, through its adapter, against a fake built from those answers
(testing/vendor_answers.py); the waterfall; the limits every worker shares in
Redis (a real one); keys that never leak.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx
from arq.connections import RedisSettings, create_pool
from arq.jobs import Job
from pydantic import ValidationError

from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from runtime.config import VENDOR_NAMES, Settings
from runtime.metrics import VENDOR_PAUSES
from testing.vendor_answers import EXAMPLES, PATHS, Example, example
from tests.factories import make_team
from tests.worker.test_worker import ENRICH, leads, run_burst, settings_for
from worker.client import enqueue, result
from worker.payloads import Lead
from worker.providers import (
    Outcome,
    ProviderFailure,
    VendorsPaused,
    Waterfall,
    build_providers,
)
from worker.providers.gate import Gate
from worker.providers.vendor import NORMALIZED, Kind, VendorClient
from worker.providers.vendors import VENDORS
from worker.queue import QUEUE

KEY = "live_KEY-0123456789-SECRET"
BASE = "https://vendor.test"
JANE = Lead(
    id="jane",
    email="jane@acme.com",
    first_name="Jane",
    last_name="Doe",
    company_domain="acme.com",
)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match="tokens:vendor:*")]
    if keys:
        await client.delete(*keys)
    yield client
    await client.aclose()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def client_for(
    name: str, http: httpx.AsyncClient, redis: aioredis.Redis, **kwargs: Any
) -> VendorClient:
    vendor = VENDORS[name]()
    gate = Gate(redis, name, concurrency=vendor.concurrency, rates=vendor.rates, slot_ttl=10)
    return VendorClient(vendor, KEY, BASE, http, gate, timeout=kwargs.pop("timeout", 2.0), **kwargs)


def route(mock: respx.MockRouter, vendor: str) -> respx.Route:
    method, path = PATHS[vendor]
    return mock.route(method=method, path=path)


def respond(ex: Example) -> httpx.Response:
    if ex.body is None:
        return httpx.Response(ex.status, headers=ex.headers)
    return httpx.Response(ex.status, json=ex.body, headers=ex.headers)


def no_key(*values: Any) -> None:
    for value in values:
        assert KEY not in json.dumps(value, default=str)


# ------------------------------------------------- every documented answer


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda ex: f"{ex.vendor}-{ex.label}")
async def test_each_documented_answer_means_one_thing(
    ex: Example, http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    client = client_for(ex.vendor, http, redis)
    with respx.mock(base_url=BASE) as mock:
        sent = route(mock, ex.vendor).mock(return_value=respond(ex))
        reply = await client.ask(JANE, 0)
    assert sent.call_count == 1
    assert reply.kind == Kind(ex.kind), reply.reason
    assert reply.http_status == ex.status
    assert reply.reason.startswith(f"HTTP {ex.status}: ")
    no_key(reply.reason, reply.trail())
    if ex.kind == "searched":
        assert reply.result is not None
        assert str(reply.result.outcome) == ex.outcome
        data = reply.result.data
        assert set(NORMALIZED) <= data.keys()
        assert data["verdict"]["http_status"] == ex.status
        if ex.email_status:
            assert data["email_status"] == ex.email_status
        no_key(data)
    else:
        assert reply.result is None
    paused = await client.gate.pause_left()
    assert (paused > 0) == (ex.kind == "ours")


def test_every_row_of_every_table_has_a_documented_example() -> None:
    for name, vendor_class in VENDORS.items():
        vendor = vendor_class()
        hit = {id(vendor.classify(ex.status, ex.body)) for ex in EXAMPLES if ex.vendor == name}
        missing = [a.meaning for a in vendor.answers if id(a) not in hit]
        assert not missing, f"{name}: no example for {missing}"


async def test_requests_are_the_vendors_own(http: httpx.AsyncClient, redis: aioredis.Redis) -> None:
    with respx.mock(base_url=BASE) as mock:
        routes = {v: route(mock, v) for v in PATHS}
        for vendor, r in routes.items():
            r.mock(return_value=respond(next(ex for ex in EXAMPLES if ex.vendor == vendor)))
            await client_for(vendor, http, redis).ask(JANE, 70)
        debounce = routes["debounce"].calls.last.request.url.params
        assert dict(debounce) == {"api": KEY, "email": "jane@acme.com"}
        zerobounce = routes["zerobounce"].calls.last.request.url.params
        assert (zerobounce["api_key"], zerobounce["email"]) == (KEY, "jane@acme.com")
        pdl = routes["pdl"].calls.last.request
        assert pdl.headers["x-api-key"] == KEY
        assert json.loads(pdl.content) == {
            "email": "jane@acme.com",
            "first_name": "Jane",
            "last_name": "Doe",
            "company": "acme.com",
            "min_likelihood": 7,
        }
        hunter = routes["hunter"].calls.last.request
        assert hunter.headers["x-api-key"] == KEY
        assert dict(hunter.url.params) == {
            "domain": "acme.com",
            "first_name": "Jane",
            "last_name": "Doe",
        }


async def test_normalized_results(http: httpx.AsyncClient, redis: aioredis.Redis) -> None:
    with respx.mock(base_url=BASE) as mock:
        route(mock, "pdl").mock(return_value=respond(example("pdl", "match")))
        route(mock, "hunter").mock(return_value=respond(example("hunter", "found")))
        pdl = await client_for("pdl", http, redis).ask(JANE, 0)
        hunter = await client_for("hunter", http, redis).ask(JANE, 0)
    assert pdl.result is not None and hunter.result is not None
    assert {k: pdl.result.data[k] for k in NORMALIZED} == {
        "email": "jane.doe@acme.com",
        "email_status": None,
        "phone": "+14155550123",
        "title": "head of sales",
        "company": "acme",
        "linkedin": "linkedin.com/in/janedoe",
    }
    assert pdl.confidence == 80 and pdl.result.data["verdict"]["body"]["likelihood"] == 8
    assert {k: hunter.result.data[k] for k in NORMALIZED} == {
        "email": "jane.doe@acme.com",
        "email_status": "deliverable",
        "phone": None,
        "title": "Head of Sales",
        "company": "Acme",
        "linkedin": "https://www.linkedin.com/in/janedoe",
    }
    assert hunter.confidence == 92


@pytest.mark.parametrize("vendor", sorted(PATHS))
@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>maintenance</html>"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(201, json={"surprise": True, "echo": KEY}),
    ],
)
async def test_a_2xx_no_row_reads_is_a_search_unrecognized(
    vendor: str, response: httpx.Response, http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    with respx.mock(base_url=BASE) as mock:
        route(mock, vendor).mock(return_value=response)
        reply = await client_for(vendor, http, redis).ask(JANE, 0)
    assert reply.kind is Kind.SEARCHED
    assert reply.result is not None and reply.result.outcome is Outcome.UNRECOGNIZED
    assert reply.result.data["unrecognized"] is True
    no_key(reply.result.data, reply.reason)


async def test_a_lead_a_vendor_cannot_take_is_not_sent(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    lead = Lead(linkedin_url="https://www.linkedin.com/in/jane")
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        sent = [route(mock, v) for v in ("debounce", "zerobounce", "hunter")]
        for vendor in ("debounce", "zerobounce", "hunter"):
            reply = await client_for(vendor, http, redis).ask(lead, 0)
            assert reply.kind is Kind.NEVER
    assert not any(r.called for r in sent)


@pytest.mark.parametrize("vendor", ["debounce", "zerobounce"])
async def test_a_key_in_the_query_string_never_leaks(
    vendor: str, http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    client = client_for(vendor, http, redis)
    failures = [
        httpx.ConnectError(f"connect failed for {BASE}/v1/?api={KEY}&email=x"),
        httpx.ReadTimeout(f"timed out {KEY}"),
        httpx.DecodingError(f"bad gzip from ...?api_key={KEY}"),
    ]
    for failure in failures:
        with respx.mock(base_url=BASE) as mock:
            route(mock, vendor).mock(side_effect=failure)
            reply = await client.ask(JANE, 0)
        assert reply.kind is Kind.WAIT
        no_key(reply.reason, reply.trail())
    echo = {"debounce": {"result": "Safe to Send", "email": KEY}, "success": "1"}
    if vendor == "zerobounce":
        echo = {"status": "valid", "address": f"x@{KEY}"}
    with respx.mock(base_url=BASE) as mock:
        route(mock, vendor).respond(200, json=echo)
        reply = await client.ask(JANE, 0)
    assert reply.result is not None
    no_key(reply.result.data)
    assert "***" in json.dumps(reply.result.data)


# ------------------------------------------------ our problems, shared limits


async def test_ours_pauses_the_vendor_for_every_worker_and_tells_once(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    before = VENDOR_PAUSES.labels("pdl")._value.get()
    worker_a = client_for("pdl", http, redis, pause_seconds=30)
    worker_b = client_for("pdl", http, redis, pause_seconds=30)
    with respx.mock(base_url=BASE) as mock:
        route(mock, "pdl").mock(return_value=respond(example("pdl", "credits")))
        assert (await worker_a.ask(JANE, 0)).kind is Kind.OURS
        assert (await worker_b.ask(JANE, 0)).kind is Kind.OURS
    assert VENDOR_PAUSES.labels("pdl")._value.get() == before + 1
    assert 25 < await worker_b.gate.pause_left() <= 30


async def test_concurrency_is_shared_by_all_workers(redis: aioredis.Redis) -> None:
    gates = [Gate(redis, "debounce", concurrency=5, slot_ttl=10) for _ in range(3)]
    soon = time.monotonic() + 0.2
    tokens = [await gates[i % 3].enter(soon) for i in range(5)]
    assert all(tokens)
    assert await gates[2].enter(time.monotonic()) is None  # a sixth, from any worker: no
    assert tokens[0] is not None
    await gates[0].leave(tokens[0])
    assert await gates[1].enter(time.monotonic()) is not None


async def test_rate_windows_are_shared(redis: aioredis.Redis) -> None:
    gates = [Gate(redis, "hunter", rates=((60.0, 15),)) for _ in range(2)]
    now = time.monotonic()
    entered = [await gates[i % 2].enter(now + 0.05) for i in range(20)]
    assert sum(t is not None for t in entered) == 15


async def test_a_rate_limit_answer_cools_every_worker(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    """PDL's 429 with x-ratelimit-reset: nobody calls until the reset."""
    with respx.mock(base_url=BASE) as mock:
        sent = route(mock, "pdl").mock(return_value=respond(example("pdl", "rate")))
        assert (await client_for("pdl", http, redis).ask(JANE, 0)).kind is Kind.WAIT
        other = client_for("pdl", http, redis, timeout=0.5)
        reply = await other.ask(JANE, 0)
    assert reply.kind is Kind.WAIT and reply.reason.startswith("busy")
    assert sent.call_count == 1
    assert 0 < await redis.pttl("tokens:vendor:pdl:cool") <= 2000


# ------------------------------------------------------------- the waterfall


def waterfall(
    action: str, names: list[str], http: httpx.AsyncClient, redis: aioredis.Redis, **kw: Any
) -> Waterfall:
    return Waterfall(action, [client_for(n, http, redis) for n in names], **kw)


async def answers(fall: Waterfall, lead: Lead, **labels: str) -> Any:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        routes = {
            v: route(mock, v).mock(return_value=respond(example(v, label)))
            for v, label in labels.items()
        }
        try:
            return await fall.run(lead), {v: r.call_count for v, r in routes.items()}
        except (ProviderFailure, VendorsPaused) as exc:
            return exc, {v: r.call_count for v, r in routes.items()}


async def test_first_found_stops_the_waterfall(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    fall = waterfall("enrich", ["pdl", "hunter"], http, redis)
    result, calls = await answers(fall, JANE, pdl="not-found", hunter="found")
    assert calls == {"pdl": 1, "hunter": 1}
    assert result.outcome is Outcome.FOUND and result.provider == "hunter"
    assert [(v["vendor"], v["answer"], v["outcome"]) for v in result.data["vendors"]] == [
        ("pdl", "searched", "not_found"),
        ("hunter", "searched", "found"),
    ]
    result, calls = await answers(fall, JANE, pdl="match", hunter="found")
    assert calls == {"pdl": 1, "hunter": 0}
    assert result.provider == "pdl" and len(result.data["vendors"]) == 1


async def test_min_confidence_passes_weak_answers_on(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    fall = waterfall("enrich", ["hunter", "pdl"], http, redis, min_confidence=95)
    result, calls = await answers(fall, JANE, hunter="found", pdl="not-found")
    assert calls == {"hunter": 1, "pdl": 1}
    # Nobody reached 95: the most confident answer is kept, flagged.
    assert result.provider == "hunter" and result.data["min_confidence_met"] is False
    verify = waterfall("verify", ["debounce", "zerobounce"], http, redis, min_confidence=60)
    result, calls = await answers(verify, JANE, debounce="risky", zerobounce="invalid")
    assert calls == {"debounce": 1, "zerobounce": 1}
    assert result.outcome is Outcome.INVALID and result.provider == "zerobounce"


async def test_asking_everyone_keeps_the_most_confident(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    fall = waterfall("enrich", ["pdl", "hunter"], http, redis, stop_at_first_found=False)
    result, calls = await answers(fall, JANE, pdl="match", hunter="found")
    assert calls == {"pdl": 1, "hunter": 1}
    assert result.provider == "hunter"  # 92 beats PDL's likelihood 8 (80)


async def test_an_erased_person_stops_the_waterfall(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    fall = waterfall("enrich", ["hunter", "pdl"], http, redis)
    result, calls = await answers(fall, JANE, hunter="erased", pdl="match")
    assert calls == {"hunter": 1, "pdl": 0}
    assert result.outcome is Outcome.NOT_FOUND and result.data["erased"] is True


async def test_our_key_refused_tries_the_next_vendor(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    fall = waterfall("verify", ["debounce", "zerobounce"], http, redis)
    result, calls = await answers(fall, JANE, debounce="bad-key", zerobounce="valid")
    assert calls == {"debounce": 1, "zerobounce": 1}
    assert result.provider == "zerobounce"
    # Paused now: the next lead does not even ask DeBounce.
    result, calls = await answers(fall, JANE, debounce="safe", zerobounce="valid")
    assert calls == {"debounce": 0, "zerobounce": 1}
    assert result.data["vendors"][0]["answer"] == "paused"


async def test_no_vendor_searched_releases_or_waits(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    fall = waterfall("enrich", ["pdl", "hunter"], http, redis)
    failure, _ = await answers(fall, JANE, pdl="bad-request", hunter="unprocessable")
    assert isinstance(failure, ProviderFailure) and not failure.retryable
    failure, _ = await answers(fall, JANE, pdl="server", hunter="unprocessable")
    assert isinstance(failure, ProviderFailure) and failure.retryable
    # Our credits gone at both: this lead is released, the vendors paused...
    failure, _ = await answers(fall, JANE, pdl="credits", hunter="credits")
    assert isinstance(failure, ProviderFailure) and not failure.retryable
    no_key(str(failure))
    # ...and the next leads wait for the pause instead of burning through the queue.
    paused, calls = await answers(fall, JANE, pdl="match", hunter="found")
    assert isinstance(paused, VendorsPaused) and calls == {"pdl": 0, "hunter": 0}
    assert 0 < paused.defer_s <= 300


async def test_a_search_then_a_wait_is_charged(
    http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    fall = waterfall("enrich", ["pdl", "hunter"], http, redis)
    result, _ = await answers(fall, JANE, pdl="not-found", hunter="rate")
    assert result.outcome is Outcome.NOT_FOUND
    assert [v["answer"] for v in result.data["vendors"]] == ["searched", "wait"]


# ------------------------------------------------------------- configuration


def test_settings_name_known_vendors_with_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("PDL", "HUNTER"):
        monkeypatch.delenv(f"TOKENS_{name}_API_KEY", raising=False)
        monkeypatch.delenv(f"TOKENS_{name}_API_KEY_FILE", raising=False)
    with pytest.raises(ValidationError, match="unknown vendor 'clearbit'"):
        Settings(enrich_providers="pdl,clearbit")
    with pytest.raises(ValidationError, match="unknown vendor 'debounce'"):
        Settings(enrich_providers="debounce")
    with pytest.raises(ValidationError, match="TOKENS_PDL_API_KEY or TOKENS_PDL_API_KEY_FILE"):
        Settings(enrich_providers="pdl")
    monkeypatch.setenv("TOKENS_PDL_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="cannot read") as info:
        Settings(enrich_providers="pdl")
    assert KEY not in str(info.value)
    (tmp_path / "pdl.key").write_text(KEY + "\n")
    monkeypatch.setenv("TOKENS_PDL_API_KEY_FILE", str(tmp_path / "pdl.key"))
    monkeypatch.setenv("TOKENS_HUNTER_API_KEY", "h-key")
    monkeypatch.setenv("TOKENS_HUNTER_BASE_URL", "http://127.0.0.1:9/")
    settings = Settings(enrich_providers=" PDL , hunter")
    assert settings.vendors["pdl"].api_key.get_secret_value() == KEY
    assert settings.vendors["hunter"].base_url == "http://127.0.0.1:9/"
    assert KEY not in repr(settings)


async def test_build_providers_makes_the_waterfall(
    monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    monkeypatch.setenv("TOKENS_DEBOUNCE_API_KEY", KEY)
    monkeypatch.setenv("TOKENS_ZEROBOUNCE_API_KEY", KEY)
    monkeypatch.setenv("TOKENS_ZEROBOUNCE_BASE_URL", BASE + "/")
    settings = Settings(verify_providers="debounce,zerobounce", verify_min_confidence=60)
    providers = build_providers(settings, http, redis=redis)
    verify = providers.verify
    assert isinstance(verify, Waterfall) and not verify.sandbox
    assert [c.base_url for c in verify.clients] == ["https://api.debounce.io", BASE]
    assert verify.min_confidence == 60
    assert KEY not in repr(providers)
    assert providers.enrich.sandbox  # no enrich vendors named: the sandbox stays


# ------------------------------------------------------------- in the worker


async def test_an_unreadable_2xx_is_charged_by_the_worker(
    ledger: Ledger, database_url: str, redis_url: str
) -> None:
    """The provider searched and answered 2xx with something we cannot read: the
    lead is charged (captured), not released."""
    arq = await create_pool(RedisSettings.from_dsn(redis_url))
    await arq.flushdb()
    await make_team(ledger)
    [job] = await enqueue(arq, DEFAULT_CATALOG, "acme", "enrich", payload=leads(1))
    with respx.mock(base_url=ENRICH) as mock:
        mock.post("/v1/enrich").respond(200, json={"found": True, "person": None})
        await run_burst(settings_for(database_url, redis_url, enrich_base_url=ENRICH))
    out = await result(arq, job.job_id)
    await arq.aclose()
    assert (out["status"], out["outcome"], out["charged"]) == ("captured", "unrecognized", True)
    [charge] = await ledger.history("acme")
    assert charge.state == "captured"


async def test_jobs_wait_out_a_pause_without_using_their_tries(
    ledger: Ledger,
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    redis: aioredis.Redis,
) -> None:
    """Every vendor paused (our key, our credits): the job waits in the queue with its
    hold, and the wait is not a try (one try allowed here: it still searches after)."""
    for name in ("PDL", "HUNTER"):
        monkeypatch.setenv(f"TOKENS_{name}_API_KEY", KEY)
        monkeypatch.setenv(f"TOKENS_{name}_BASE_URL", BASE)
    for name in ("pdl", "hunter"):
        await Gate(redis, name).pause(1.0)
    arq = await create_pool(RedisSettings.from_dsn(redis_url))
    await arq.flushdb()
    for name in ("pdl", "hunter"):
        await Gate(redis, name).pause(1.0)  # flushdb took the first pause away
    await make_team(ledger)
    payload = {"leads": [{"id": "l0", "first_name": "Jane", "last_name": "Doe",
                          "company_domain": "acme.com"}]}  # fmt: skip
    [job] = await enqueue(arq, DEFAULT_CATALOG, "acme", "enrich", payload=payload)
    settings = settings_for(database_url, redis_url, enrich_providers="pdl,hunter")
    settings.job_max_tries = 1
    with respx.mock(base_url=BASE) as mock:
        sent = route(mock, "pdl").mock(return_value=respond(example("pdl", "match")))
        await run_burst(settings)
    info = await Job(job.job_id, arq, _queue_name=QUEUE).result_info()
    await arq.aclose()
    assert info is not None and info.success, info
    assert info.result["status"] == "captured" and info.result["provider"] == "pdl"
    assert info.job_try == 1  # the waits were given back
    assert sent.call_count == 1
    [charge] = await ledger.history("acme")
    assert charge.state == "captured"


def test_settings_know_the_vendors_the_worker_builds() -> None:
    """Settings check vendor names without loading the vendors' code: the two lists agree."""
    built = {
        action: tuple(sorted(n for n, v in VENDORS.items() if v.action == action))
        for action in ("enrich", "verify")
    }
    assert built == VENDOR_NAMES
