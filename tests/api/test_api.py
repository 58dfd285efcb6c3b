"""The HTTP API (README "The HTTP API and the billing page") on the real ledger, queue and
bills, through ASGI."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job

from api.app import create_app
from api.page import csrf_token
from api.services import Services
from billing.reconcile import create_bills
from ledger.errors import UnknownTeam
from ledger.service import Ledger
from tests.api_helpers import (
    NOW,
    SECRET,
    api_services,
    arq_redis,
    bearer,
    client,
    services_for,
    settings_for,
    token,
)
from tests.cli_helpers import Cli
from tests.clock import at
from tests.factories import make_team
from tests.worker.test_worker import run_burst
from worker.bulk import JobSpec, enqueue_many
from worker.client import CLAIM_PREFIX, _fingerprint, plan_jobs
from worker.queue import QUEUE


def leads(n: int) -> dict[str, object]:
    return {"leads": [{"id": f"l{i}", "email": f"p{i}@acme.io"} for i in range(n)]}


async def test_billing_is_the_cli_billing_json(
    ledger: Ledger, client: httpx.AsyncClient, cli: Cli
) -> None:
    await make_team(ledger, limit=1000, seats=2, at=NOW)
    for n in range(3):
        await ledger.charge("acme", "ai_sequence", 5, key=f"k{n}", at=NOW)  # 750 > 500 free
    response = await client.get("/v1/teams/acme/billing", headers=bearer("member"))
    assert response.status_code == 200
    body = response.json()
    # The CLI runs its own event loop: in a thread, on the same database.
    printed = await asyncio.to_thread(cli.ok, "billing", "acme", "--at", NOW.isoformat(), "--json")
    assert body == printed.json()
    assert (body["free_spent"], body["additional_spent"], body["additional_spent_usd"]) == (
        500,
        250,
        "2.50",
    )


async def test_alerts_are_the_cli_alerts_json(
    ledger: Ledger, client: httpx.AsyncClient, cli: Cli
) -> None:
    await make_team(ledger, limit=100, seats=2, at=NOW)  # 500 free tokens, 100 additional
    await ledger.charge("acme", "ai_sequence", 9, key="a", at=NOW)  # 450: 90 % of free
    await ledger.charge("acme", "ai_sequence", 3, key="b", at=NOW)  # 500 free + 100 additional
    response = await client.get("/v1/teams/acme/alerts", headers=bearer("member"))
    assert response.status_code == 200
    body = response.json()
    levels = sorted((a["kind"], a["level"]) for a in body["alerts"])
    assert levels == [("additional", 80), ("additional", 100), ("free", 80), ("free", 100)]
    printed = await asyncio.to_thread(cli.ok, "alerts", "acme", "--json")
    assert body["alerts"] == printed.json()


async def test_teams_are_listed_for_the_service_only_as_the_cli_lists_them(
    ledger: Ledger, client: httpx.AsyncClient, cli: Cli
) -> None:
    await make_team(ledger, "zeta", seats=3, at=NOW)
    await make_team(ledger, "acme", plan="trial", seats=1, at=NOW)
    response = await client.get("/v1/teams", headers=bearer("service", None))
    assert response.status_code == 200, response.text
    listed = response.json()["teams"]
    assert [(t["team"], t["plan"], t["seats"], t["interval"]) for t in listed] == [
        ("acme", "trial", 1, "month"),
        ("zeta", "email_outreach", 3, "month"),
    ]
    # NOW is 2026-03-10, the teams' anchor 2026-01-01: March is their month.
    assert {(t["period_start"], t["period_end"]) for t in listed} == {
        ("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")
    }
    printed = await asyncio.to_thread(cli.ok, "teams", "--json", "--at", "2026-03-10T12:00:00Z")
    assert printed.json() == listed
    table = await asyncio.to_thread(cli.ok, "teams", "--at", "2026-03-10T12:00:00Z")
    assert table.out.splitlines()[2].split() == [
        "zeta",
        "email_outreach",
        "3",
        "month",
        "2026-03-01",
        "->",
        "2026-04-01",
    ]
    for role in ("member", "admin"):
        refused = await client.get("/v1/teams", headers=bearer(role))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden_role"


async def test_the_page_history_is_one_billing_month_and_links_the_others(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(
        ledger, seats=2, at=NOW
    )  # monthly from 2026-01-01; the page's clock is 2026-03-10
    await ledger.charge("acme", "enrich", 1, key="feb", at=at("2026-02-10T09:30:00"))
    await ledger.charge("acme", "debounce", 1, key="mar", at=NOW)
    signed_in = await client.get(f"/teams/acme/billing?token={token('member')}&month=2026-02-01")
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/teams/acme/billing?month=2026-02-01"
    march = await client.get("/teams/acme/billing")
    assert march.status_code == 200, march.text
    rows = march.text.split("<tbody>")[1].split("</tbody>")[0]
    assert rows.count("<tr") == 1 and "debounce" in rows and "2026-03-10 12:00" in rows
    assert 'href="/teams/acme/billing?month=2026-02-01T00%3A00%3A00Z"' in march.text
    february = await client.get("/teams/acme/billing", params={"month": "2026-02-01T00:00:00Z"})
    assert february.status_code == 200
    rows = february.text.split("<tbody>")[1].split("</tbody>")[0]
    assert rows.count("<tr") == 1 and "enrich" in rows and "2026-02-10 09:30" in rows
    assert 'href="/teams/acme/billing"' in february.text  # back to this month
    # The panels stay this month's whatever month the history shows.
    assert 'id="free-spent">1<' in february.text  # March's debounce, not February's 10
    unknown = await client.get("/teams/acme/billing", params={"month": "2025-07-01"})
    assert unknown.status_code == 404 and "no billing month" in unknown.text
    bad = await client.get("/teams/acme/billing", params={"month": "soon"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("text/html")


async def test_history_pages_newest_first_and_csv_has_them_all(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    for n in range(7):
        await ledger.charge("acme", "debounce", 1, key=f"k{n}", at=NOW)
    ids: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        response = await client.get(
            "/v1/teams/acme/history", params=params, headers=bearer("admin")
        )
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [c["charge_id"] for c in page["charges"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7
    csv = await client.get("/v1/teams/acme/history.csv", headers=bearer("member"))
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert "action" in lines[0].split(",") and len(lines) == 8
    bad = await client.get(
        "/v1/teams/acme/history", params={"cursor": "x"}, headers=bearer("admin")
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"


async def test_limit_change_records_the_token_sub_and_admins_only(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    ok = await client.put(
        "/v1/teams/acme/limit", json={"tokens": 500}, headers=bearer("admin", sub="alice")
    )
    assert ok.status_code == 200, ok.text
    assert ok.json() | {"changed_at": None} == {
        "team": "acme",
        "actor": "alice",
        "role": "admin",
        "old_limit": 0,
        "new_limit": 500,
        "changed_at": None,
        "additional_limit_usd": "5.00",
        "additional_available": 500,
    }
    for role in ("member", "service"):
        refused = await client.put(
            "/v1/teams/acme/limit", json={"tokens": 9}, headers=bearer(role, sub="mallory")
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden_role"
    changes = await ledger.limit_changes("acme")
    assert [(c.actor, c.new_limit) for c in changes] == [("alice", 500)]
    for bad in ({"tokens": -1}, {"tokens": "5"}, {"tokens": 1.5}, {}, {"tokens": 10**13}):
        response = await client.put("/v1/teams/acme/limit", json=bad, headers=bearer("admin"))
        assert response.status_code == 422, bad
        assert set(response.json()["error"]) == {"code", "message"}
    await make_team(ledger, "trialco", plan="trial", seats=1, at=NOW)
    trial = await client.put(
        "/v1/teams/trialco/limit", json={"tokens": 5}, headers=bearer("admin", team="trialco")
    )
    assert trial.status_code == 422 and trial.json()["error"]["code"] == "trial_no_additional"
    assert (await ledger.get_team("acme")).additional_limit == 500


async def test_put_team_is_for_the_service_role(ledger: Ledger, client: httpx.AsyncClient) -> None:
    body = {"plan": "sales_engagement", "seats": 2, "interval": "month", "anchor": "2026-03-01"}
    refused = await client.put("/v1/teams/newco", json=body, headers=bearer("admin", "newco"))
    assert refused.status_code == 403
    created = await client.put("/v1/teams/newco", json=body, headers=bearer("service", None))
    assert created.status_code == 201, created.text
    assert created.json()["free_granted"] == 1000 and created.json()["created"] is True
    updated = await client.put(
        "/v1/teams/newco", json=body | {"seats": 3}, headers=bearer("service", None)
    )
    assert updated.status_code == 200
    assert (updated.json()["created"], updated.json()["free_granted"]) == (False, 1500)
    unknown = await client.put(
        "/v1/teams/newco", json=body | {"plan": "gold"}, headers=bearer("service", None)
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_plan"
    # An anchor already past takes effect now: the month ends at the change (NOW, Mar 10).
    earlier = await client.put(
        "/v1/teams/newco", json=body | {"anchor": "2026-02-15"}, headers=bearer("service", None)
    )
    assert earlier.status_code == 200, earlier.text
    assert (earlier.json()["period_start"], earlier.json()["period_end"]) == (
        "2026-03-10T12:00:00Z",
        "2026-03-15T00:00:00Z",
    )
    ended = await ledger.billing("newco", at=NOW - timedelta(seconds=1))
    assert (ended.period_start, ended.period_end) == (at("2026-03-01"), NOW)
    # A month opened ahead (a clock set forward) is not rewritten: a conflict.
    await ledger.billing("newco", at=at("2026-04-20"))
    ahead = await client.put(
        "/v1/teams/newco", json=body | {"anchor": "2026-03-05"}, headers=bearer("service", None)
    )
    assert ahead.status_code == 409 and ahead.json()["error"]["code"] == "anchor_conflict"
    week = await client.put(
        "/v1/teams/newco", json=body | {"interval": "week"}, headers=bearer("service", None)
    )
    assert week.status_code == 422
    team = await ledger.get_team("newco")  # as the last accepted PUT (the anchor's) left it
    assert (team.seats, team.anchor) == (2, at("2026-02-15"))


async def test_an_anchor_out_of_range_is_refused_and_creates_nothing(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    body = {"plan": "sales_engagement", "seats": 2, "interval": "month"}
    # Year 1 went to Postgres as -infinity; +05:00 and year 9999 overflowed Python's dates.
    for anchor in (
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
    ):
        refused = await client.put(
            "/v1/teams/edge", json=body | {"anchor": anchor}, headers=bearer("service", None)
        )
        assert refused.status_code == 422, (anchor, refused.text)
        assert refused.json()["error"]["code"] == "bad_input"
        assert "out of range" in refused.json()["error"]["message"]
    with pytest.raises(UnknownTeam):
        await ledger.get_team("edge")


async def test_jobs_are_queued_once_per_id(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    body = {"action": "enrich", "payload": leads(3), "job_id": "b1"}
    first = await client.post("/v1/teams/acme/jobs", json=body, headers=bearer("member"))
    assert first.status_code == 202, first.text
    # The id is the team's: the queue's id says whose it is.
    assert first.json()["jobs"][0] == {"job_id": "acme~b1:l0", "lead_id": "l0", "queued": True}
    again = await client.post("/v1/teams/acme/jobs", json=body, headers=bearer("member"))
    assert [j["queued"] for j in again.json()["jobs"]] == [False, False, False]
    assert await arq_redis.zcard(QUEUE) == 3
    info = await Job("acme~b1:l1", arq_redis, _queue_name=QUEUE).info()
    assert info is not None and info.function == "enrich"
    assert info.args == ("acme", {"id": "l1", "email": "p1@acme.io"})
    bad = {"action": "enrich", "payload": {"leads": [{"id": "x"}]}}
    refused = await client.post("/v1/teams/acme/jobs", json=bad, headers=bearer("member"))
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "bad_input"
    unknown = await client.post("/v1/teams/nope/jobs", json=body, headers=bearer("service", None))
    assert unknown.status_code == 404
    assert await arq_redis.zcard(QUEUE) == 3


async def test_a_job_id_used_for_another_request_is_a_409_and_queues_nothing(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    await make_team(ledger, "rival", seats=2, at=NOW)
    payload = {"prompt": "hello", "tone": "warm"}
    body = {"action": "ai_sequence", "payload": payload, "job_id": "j2", "quantity": 2}
    first = await client.post("/v1/teams/rival/jobs", json=body, headers=bearer("service", None))
    assert [j["queued"] for j in first.json()["jobs"]] == [True, True]
    # The same request again (its keys in another order) is a replay, as before.
    spelled = body | {"payload": {"tone": "warm", "prompt": "hello"}}
    again = await client.post("/v1/teams/rival/jobs", json=spelled, headers=bearer("service", None))
    assert again.status_code == 202 and [j["queued"] for j in again.json()["jobs"]] == [False] * 2
    for other in (
        body | {"quantity": 3},
        body | {"payload": {"prompt": "other"}},
        {"action": "enrich", "payload": leads(2), "job_id": "j2"},
    ):
        refused = await client.post(
            "/v1/teams/rival/jobs", json=other, headers=bearer("service", None)
        )
        assert refused.status_code == 409, (other, refused.text)
        assert refused.json()["error"]["code"] == "job_id_reused"
    # Nor may a job id name another request's job: "j2:0" would be j2's first generation.
    colon = await client.post(
        "/v1/teams/rival/jobs", json=body | {"job_id": "j2:0", "quantity": 1},
        headers=bearer("service", None),
    )  # fmt: skip
    assert colon.status_code == 422 and "job_id" in colon.json()["error"]["message"]
    assert await arq_redis.zcard(QUEUE) == 2
    info = await Job("rival~j2:0", arq_redis, _queue_name=QUEUE).info()
    assert info is not None and info.args == ("rival", payload)


async def test_two_teams_may_use_the_same_job_id_and_get_two_jobs(
    ledger: Ledger,
    client: httpx.AsyncClient,
    arq_redis: ArqRedis,
    database_url: str,
    redis_url: str,
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    await make_team(ledger, "rival", seats=2, at=NOW)
    body = {"action": "enrich", "payload": leads(1), "job_id": "import-43"}
    # The rival claims the id first, with another request than acme's.
    rival = await client.post(
        "/v1/teams/rival/jobs", json=body | {"payload": leads(2)}, headers=bearer("member", "rival")
    )
    assert rival.status_code == 202
    own = await client.post("/v1/teams/acme/jobs", json=body, headers=bearer("member"))
    assert own.status_code == 202, own.text
    [job] = own.json()["jobs"]
    assert job["queued"] is True and job["job_id"] != rival.json()["jobs"][0]["job_id"]
    assert await arq_redis.zcard(QUEUE) == 3
    await run_burst(settings_for(database_url, redis_url))
    # The id the 202 gave is what GET /v1/jobs takes; each team sees its own job only.
    mine = await client.get(f"/v1/jobs/{job['job_id']}", headers=bearer("member"))
    assert mine.status_code == 200, mine.text
    assert (mine.json()["team"], mine.json()["status"]) == ("acme", "captured")
    assert mine.json()["charge"]["job_id"] == job["job_id"]
    assert [c.job_id for c in await ledger.history("acme")] == [job["job_id"]]
    assert len(await ledger.history("rival")) == 2
    theirs = await client.get(f"/v1/jobs/{job['job_id']}", headers=bearer("member", "rival"))
    unknown = await client.get("/v1/jobs/acme~import-44:l0", headers=bearer("member", "rival"))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"] == "unknown_job"
    assert theirs.json()["error"]["message"] == f"unknown job {job['job_id']!r}"


async def test_a_request_queued_under_a_bare_job_id_is_replayed_not_queued_again(
    ledger: Ledger,
    client: httpx.AsyncClient,
    arq_redis: ArqRedis,
    database_url: str,
    redis_url: str,
) -> None:
    # Jobs queued before job ids belonged to their team: bare ids, a bare claim.
    await make_team(ledger, seats=2, at=NOW)
    await make_team(ledger, "rival", seats=2, at=NOW)
    body = {"action": "enrich", "payload": leads(2), "job_id": "old"}
    planned = plan_jobs(ledger.catalog, "acme", "enrich", quantity=None, payload=leads(2))
    bare = [(f"old:l{n}", args, lead) for n, (_, args, lead) in enumerate(planned)]
    await arq_redis.set(CLAIM_PREFIX + "old", _fingerprint("enrich", bare))
    await enqueue_many(
        arq_redis, [JobSpec("enrich", jid, args) for jid, args, _ in bare], queue=QUEUE
    )
    again = await client.post("/v1/teams/acme/jobs", json=body, headers=bearer("member"))
    assert again.status_code == 202
    assert [(j["job_id"], j["queued"]) for j in again.json()["jobs"]] == [
        ("old:l0", False),
        ("old:l1", False),
    ]
    # Another team's request with that id is its own, not held back by the bare claim.
    rival = await client.post("/v1/teams/rival/jobs", json=body, headers=bearer("member", "rival"))
    assert [j["job_id"] for j in rival.json()["jobs"]] == ["rival~old:l0", "rival~old:l1"]
    await run_burst(settings_for(database_url, redis_url))
    # The old job is still read by its id, with its charge under the old key.
    done = await client.get("/v1/jobs/old:l0", headers=bearer("member"))
    assert done.status_code == 200 and done.json()["charge"]["key"] == "old:l0:l0"
    assert len(await ledger.history("acme")) == 2


async def _commands(redis: ArqRedis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def test_ten_thousand_leads_in_one_request_in_a_few_round_trips(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    before = await _commands(arq_redis)
    response = await client.post(
        "/v1/teams/acme/jobs",
        json={"action": "debounce", "payload": leads(10_000)},
        headers=bearer("service", None),
    )
    after = await _commands(arq_redis)
    assert response.status_code == 202
    jobs = response.json()["jobs"]
    assert len(jobs) == 10_000 and all(j["queued"] for j in jobs)
    assert await arq_redis.zcard(QUEUE) == 10_000
    # One script call per 1,000 jobs, and none of enqueue_job's per-job WATCH/EXISTS.
    scripts = sum(after.get(c, 0) - before.get(c, 0) for c in ("evalsha", "eval"))
    assert 10 <= scripts <= 11
    assert after.get("watch", 0) == before.get("watch", 0)


async def test_an_icebreaker_job_is_found_by_its_lead_as_the_worker_reads_it(
    ledger: Ledger, client: httpx.AsyncClient, database_url: str, redis_url: str
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    lead = {"id": " L1 ", "first_name": "Ann", "email": "ann@acme.io"}  # the worker strips it
    posted = await client.post(
        "/v1/teams/acme/jobs",
        json={"action": "ai_icebreaker", "payload": {"lead": lead}, "job_id": "ib", "quantity": 2},
        headers=bearer("member"),
    )
    assert [(j["job_id"], j["lead_id"]) for j in posted.json()["jobs"]] == [
        ("acme~ib:0", "L1"),
        ("acme~ib:1", "L1"),
    ]
    await run_burst(settings_for(database_url, redis_url))
    done = (await client.get("/v1/jobs/acme~ib:0", headers=bearer("member"))).json()
    assert (done["status"], done["lead_id"]) == ("captured", "L1")
    assert done["charge"] is not None and done["charge"]["state"] == "captured"


async def test_job_status_from_queue_to_charge(
    ledger: Ledger,
    client: httpx.AsyncClient,
    database_url: str,
    redis_url: str,
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    await make_team(ledger, "broke", seats=0, at=NOW)
    ok = await client.post(
        "/v1/teams/acme/jobs",
        json={"action": "enrich", "payload": leads(1), "job_id": "j1"},
        headers=bearer("member"),
    )
    assert ok.status_code == 202
    await client.post(
        "/v1/teams/broke/jobs",
        json={"action": "enrich", "payload": leads(1), "job_id": "j2"},
        headers=bearer("member", "broke"),
    )
    queued = await client.get("/v1/jobs/acme~j1:l0", headers=bearer("member"))
    assert queued.status_code == 200
    assert (queued.json()["status"], queued.json()["charge"]) == ("queued", None)
    await run_burst(settings_for(database_url, redis_url))
    done = (await client.get("/v1/jobs/acme~j1:l0", headers=bearer("member"))).json()
    assert done["status"] == "captured" and done["team"] == "acme" and done["lead_id"] == "l0"
    assert done["charge"]["state"] == "captured" and done["charge"]["tokens"] == 10
    assert done["result"]["status"] == "captured"
    refused = await client.get("/v1/jobs/broke~j2:l0", headers=bearer("service", None))
    assert refused.json()["status"] == "refused" and refused.json()["charge"] is None
    other = await client.get("/v1/jobs/broke~j2:l0", headers=bearer("admin"))
    assert other.status_code == 404 and other.json()["error"]["code"] == "unknown_job"
    assert "broke" not in other.json()["error"]["message"].replace("broke~j2:l0", "")
    slashed = await client.post(
        "/v1/teams/acme/jobs",
        json={"action": "debounce", "payload": {"leads": [{"id": "a/b", "email": "x@y.io"}]}},
        headers=bearer("member"),
    )
    [job] = slashed.json()["jobs"]
    found = await client.get(f"/v1/jobs/{job['job_id']}", headers=bearer("member"))
    assert found.status_code == 200 and found.json()["lead_id"] == "a/b"
    missing = await client.get("/v1/jobs/nope", headers=bearer("admin"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_job"


async def test_bills_of_a_team(ledger: Ledger, client: httpx.AsyncClient) -> None:
    await make_team(ledger, seats=1, limit=10_000, at=NOW)
    await make_team(ledger, "other", seats=2, at=NOW)
    await ledger.charge("acme", "ai_sequence", 10, key="k", at=NOW)  # 250 free + 250 additional
    [bill] = await create_bills(ledger.pool, team=None, at=at("2026-04-02"))
    listed = await client.get("/v1/teams/acme/bills", headers=bearer("admin"))
    assert listed.status_code == 200
    [row] = listed.json()["bills"]
    assert (row["bill_id"], row["tokens"], row["amount_cents"]) == (bill.id, 250, 250)
    one = await client.get(f"/v1/bills/{bill.id}", headers=bearer("service", None))
    assert one.status_code == 200 and one.json()["reason"] == "month_end"
    explained = one.json()
    assert (explained["by_action"], explained["adds_up"]) == ({"ai_sequence": 250}, True)
    assert [c["additional_tokens"] for c in explained["charges"]] == [250]
    assert row["status"] == explained["status"] == "sending"  # not sent yet
    unsent = await client.get(
        "/v1/teams/acme/bills", params={"status": "paid"}, headers=bearer("admin")
    )
    assert unsent.json()["bills"] == []
    assert (await client.get(f"/v1/bills/{bill.id}", headers=bearer("member"))).status_code == 403
    # Another team's bill is an unknown one: same status, code and message shape.
    other = await client.get(f"/v1/bills/{bill.id}", headers=bearer("admin", "other"))
    unknown = await client.get("/v1/bills/999999", headers=bearer("admin", "other"))
    assert other.status_code == unknown.status_code == 404
    assert other.json()["error"]["code"] == unknown.json()["error"]["code"] == "unknown_bill"
    assert other.json()["error"]["message"] == f"unknown bill {bill.id}"
    assert unknown.json()["error"]["message"] == "unknown bill 999999"


async def test_unknown_team_route_and_bad_json_use_the_error_shape(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    unknown = await client.get("/v1/teams/ghost/billing", headers=bearer("service", None))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_team"
    route = await client.get("/v1/nothing", headers=bearer("service", None))
    assert route.status_code == 404 and route.json()["error"]["code"] == "not_found"
    await make_team(ledger, seats=2, at=NOW)
    broken = await client.put(
        "/v1/teams/acme/limit",
        content=b"{not json",
        headers=bearer("admin") | {"Content-Type": "application/json"},
    )
    assert broken.status_code == 422 and broken.json()["error"]["code"] == "invalid_request"


async def test_a_database_that_cannot_be_reached_is_a_503_not_a_500(
    ledger: Ledger, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    # A pool on a port where nothing listens: every connection attempt is refused.
    dead = await asyncpg.create_pool("postgresql://tokens@127.0.0.1:9/none", min_size=0)
    assert dead is not None
    try:
        down = Ledger(dead, ledger.catalog)
        svc: Services = services_for(down, arq_redis, settings_for(database_url, redis_url))
        app = create_app(svc.settings, svc)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            response = await c.get("/v1/teams/acme/billing", headers=bearer("member"))
            health = await c.get("/healthz")
    finally:
        await dead.close()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "unavailable"
    assert health.status_code == 503 and health.json()["postgres"].startswith("unreachable")


async def test_the_billing_page_answers_an_outage_with_a_page(
    ledger: Ledger, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    """A person in a browser gets HTML saying to reload, not the API's JSON."""
    dead = await asyncpg.create_pool("postgresql://tokens@127.0.0.1:9/none", min_size=0)
    assert dead is not None
    try:
        down = Ledger(dead, ledger.catalog)
        svc: Services = services_for(down, arq_redis, settings_for(database_url, redis_url))
        app = create_app(svc.settings, svc)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            session = token("admin")
            signed_in = await c.get(f"/teams/acme/billing?token={session}")
            page = await c.get("/teams/acme/billing")
            csrf = csrf_token(SECRET, session)
            form = await c.post("/teams/acme/billing/limit", data={"tokens": "5", "csrf": csrf})
    finally:
        await dead.close()
    assert signed_in.status_code == 303
    assert page.status_code == 503 and page.headers["retry-after"] == "5"
    assert page.headers["content-type"].startswith("text/html")
    assert "<!doctype html>" in page.text and "Reload this page" in page.text
    assert form.status_code == 503 and form.headers["retry-after"] == "5"
    assert form.headers["content-type"].startswith("text/html") and "Reload" in form.text


async def test_a_redis_that_cannot_be_reached_is_a_503(
    ledger: Ledger, database_url: str, redis_url: str
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    dead = ArqRedis(host="127.0.0.1", port=9, socket_connect_timeout=1)  # connects lazily
    svc = services_for(ledger, dead, settings_for(database_url, redis_url))
    app = create_app(svc.settings, svc)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post(
            "/v1/teams/acme/jobs",
            json={"action": "ai_sequence", "job_id": "x"},
            headers=bearer("member"),
        )
    await dead.aclose()
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "unavailable"


async def test_healthz_and_metrics(ledger: Ledger, client: httpx.AsyncClient) -> None:
    await make_team(ledger, seats=2, at=NOW)
    health = await client.get("/healthz")
    assert health.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}
    await client.get("/v1/teams/acme/billing", headers=bearer("member"))
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'route="/v1/teams/{team}/billing"' in metrics.text


async def test_a_team_id_with_a_slash_is_reached_by_every_team_route(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    # The ledger takes "/" in a team id; every route must reach such a team, whether
    # the client sends the "/" raw or as %2F.
    await make_team(ledger, "org/7", limit=100, seats=2, at=NOW)
    member, admin = bearer("member", "org/7"), bearer("admin", "org/7", sub="ann")
    for team_in_path in ("org/7", "org%2F7"):
        billing = await client.get(f"/v1/teams/{team_in_path}/billing", headers=member)
        assert billing.status_code == 200 and billing.json()["team"] == "org/7"
    history = await client.get("/v1/teams/org/7/history", headers=member)
    assert history.status_code == 200 and history.json()["charges"] == []
    csv = await client.get("/v1/teams/org/7/history.csv", headers=member)
    assert csv.status_code == 200
    assert csv.headers["content-disposition"] == 'attachment; filename="org_7-history.csv"'
    alerts = await client.get("/v1/teams/org/7/alerts", headers=member)
    assert alerts.status_code == 200 and alerts.json() == {"team": "org/7", "alerts": []}
    bills = await client.get("/v1/teams/org/7/bills", headers=admin)
    assert bills.status_code == 200 and bills.json() == {"team": "org/7", "bills": []}
    limit = await client.put("/v1/teams/org/7/limit", json={"tokens": 500}, headers=admin)
    assert limit.status_code == 200 and limit.json()["new_limit"] == 500
    assert (await ledger.get_team("org/7")).additional_limit == 500
    queued = await client.post(
        "/v1/teams/org%2F7/jobs", json={"action": "enrich", "payload": leads(2)}, headers=member
    )
    assert queued.status_code == 202 and len(queued.json()["jobs"]) == 2
    created = await client.put(
        "/v1/teams/org/8",
        json={"plan": "trial", "seats": 1, "interval": "month", "anchor": "2026-03-01T00:00:00"},
        headers=bearer("service", None),
    )
    assert created.status_code == 201 and created.json()["team"] == "org/8"
    assert (await ledger.get_team("org/8")).plan == "trial"
    # Another team's token still stops at the team in the path.
    other = await client.get("/v1/teams/org/7/billing", headers=bearer("member", "org"))
    assert other.status_code == 403
