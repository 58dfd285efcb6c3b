"""Real vendors as users run them: the installed `tokens worker` against a local
HTTP server speaking DeBounce's, ZeroBounce's, People Data Labs' and Hunter's
APIs (testing/vendor_answers.py), waterfalls configured by environment; the
charges and the jobs' results checked."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from testing.vendor_answers import VendorServer
from tests.factories import make_team
from tests.process import Tokens, clean_env
from worker.client import result

pytestmark = pytest.mark.process

KEYS = {
    "PDL": "pdl-KEY-1111111111",
    "HUNTER": "hunter-KEY-2222222222",
    "DEBOUNCE": "debounce-KEY-3333333333",
    "ZEROBOUNCE": "zerobounce-KEY-4444444444",
}


@pytest.fixture
def vendors() -> Iterator[VendorServer]:
    with VendorServer() as server:
        yield server


async def test_worker_charges_one_lead_once_across_the_waterfall(
    vendors: VendorServer, database_url: str, redis_url: str
) -> None:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))
    await redis.flushdb()
    env = clean_env(
        TOKENS_DATABASE_URL=database_url,
        TOKENS_REDIS_URL=redis_url,
        TOKENS_ENRICH_PROVIDERS="pdl,hunter",
        TOKENS_VERIFY_PROVIDERS="debounce,zerobounce",
        TOKENS_JOB_MAX_TRIES="2",
        TOKENS_RETRY_BACKOFF_SECONDS="0",
    )
    for name, key in KEYS.items():
        env[f"TOKENS_{name}_API_KEY"] = key
        env[f"TOKENS_{name}_BASE_URL"] = vendors.url
    tokens = Tokens(env, "vendors")
    team = f"t-{uuid.uuid4().hex[:10]}"
    make_team(tokens, team)

    def lead(id_: str, last: str) -> dict[str, str]:
        return {"id": id_, "first_name": "Jane", "last_name": last, "company_domain": "acme.com"}

    enrich = [
        lead("l-hunter", "pdl-not-found.hunter-found"),
        lead("l-pdl", "pdl-match"),
        lead("l-nobody", "pdl-bad-request.hunter-unprocessable"),
    ]
    verify = [
        {"id": "v-zb", "email": "debounce-unknown.zerobounce-valid@acme.com"},
        {"id": "v-db", "email": "debounce-safe@acme.com"},
    ]
    jobs = {}
    for action, leads in (("enrich", enrich), ("debounce", verify)):
        queued = tokens.ok(
            "enqueue", team, action, "--payload", json.dumps({"leads": leads}), "--json"
        ).json()
        jobs |= {j["lead_id"]: j["job_id"] for j in queued["jobs"]}

    worker = tokens.ok("worker", "--burst", timeout=120)

    history = {h["lead_id"]: h for h in tokens.ok("history", team, "--json").json()}
    assert {k: (h["state"], h["tokens"]) for k, h in history.items()} == {
        "l-hunter": ("captured", 10),  # two vendors asked, one charge
        "l-pdl": ("captured", 10),
        "l-nobody": ("released", 10),  # no vendor could search
        "v-zb": ("captured", 1),
        "v-db": ("captured", 1),
    }
    section = tokens.ok("billing", team, "--json").json()
    assert (section["free_spent"], section["held"]) == (22, 0)

    out = {lead_id: await result(redis, job_id) for lead_id, job_id in jobs.items()}
    await redis.aclose()
    hunter = out["l-hunter"]
    assert (hunter["status"], hunter["provider"], hunter["outcome"]) == (
        "captured",
        "hunter",
        "found",
    )
    assert hunter["data"]["email"] == "jane.doe@acme.com"
    assert [(v["vendor"], v["outcome"]) for v in hunter["data"]["vendors"]] == [
        ("pdl", "not_found"),
        ("hunter", "found"),
    ]
    assert out["l-pdl"]["provider"] == "pdl" and out["l-pdl"]["data"]["title"] == "head of sales"
    assert out["l-nobody"]["status"] == "failed" and out["l-nobody"]["charged"] is False
    zb = out["v-zb"]
    assert (zb["provider"], zb["data"]["email_status"]) == ("zerobounce", "deliverable")
    assert [v["vendor"] for v in zb["data"]["vendors"]] == ["debounce", "zerobounce"]
    assert out["v-db"]["provider"] == "debounce"

    asked = [c["vendor"] for c in vendors.calls]
    assert sorted(asked) == sorted(["pdl"] * 3 + ["hunter"] * 2 + ["debounce"] * 2 + ["zerobounce"])
    sent = {c["vendor"]: c for c in vendors.calls}
    assert sent["debounce"]["query"]["api"] == KEYS["DEBOUNCE"]
    assert sent["zerobounce"]["query"]["api_key"] == KEYS["ZEROBOUNCE"]
    assert sent["pdl"]["headers"]["X-Api-Key"] == KEYS["PDL"]
    assert sent["hunter"]["headers"]["X-API-KEY"] == KEYS["HUNTER"]
    shown = worker.out + worker.err + json.dumps(out)
    assert not any(key in shown for key in KEYS.values())


def test_worker_refuses_an_unknown_vendor_or_a_missing_key(database_url: str) -> None:
    tokens = Tokens(clean_env(TOKENS_DATABASE_URL=database_url), "vendors")
    tokens.with_env(TOKENS_ENRICH_PROVIDERS="pdl,clearbit").refused(
        "worker", "--burst", code=2, says="TOKENS_ENRICH_PROVIDERS: unknown vendor 'clearbit'"
    )
    tokens.with_env(TOKENS_VERIFY_PROVIDERS="debounce").refused(
        "worker", "--burst", code=2, says="TOKENS_DEBOUNCE_API_KEY or TOKENS_DEBOUNCE_API_KEY_FILE"
    )
