"""Budget control over HTTP: quotes, member caps, jobs that carry their member to the
hold, `only_if_all_fit`, and billing's members and forecast."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job

from ledger.service import Ledger
from tests.api_helpers import (
    NOW,
    api_services,
    arq_redis,
    bearer,
    client,
    settings_for,
    token,
)
from tests.factories import make_team
from tests.worker.test_worker import run_burst
from worker.client import result
from worker.queue import QUEUE

__all__ = ["api_services", "arq_redis", "client"]  # fixtures


def leads(n: int) -> dict[str, Any]:
    return {"leads": [{"id": f"l{i}", "email": f"p{i}@acme.io"} for i in range(n)]}


async def cap(ledger: Ledger, member: str, tokens: int | None, team: str = "acme") -> None:
    await ledger.set_member_cap(team, member, tokens, actor="ann", role="admin", at=NOW)


# -- quote --------------------------------------------------------------------


async def test_quote_answers_any_role_of_the_team_and_holds_nothing(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, seats=1, limit=30, at=NOW)  # 250 free + 30 additional: 28 leads of 10
    body = {"action": "enrich", "payload": leads(30)}
    for headers in (bearer("member"), bearer("admin"), bearer("service", None)):
        response = await client.post("/v1/teams/acme/quote", json=body, headers=headers)
        assert response.status_code == 200, response.text
        out = response.json()
        assert {k: out[k] for k in out if k not in ("period_start", "period_end", "member")} == {
            "team": "acme",
            "action": "enrich",
            "tokens": 300,
            "free_tokens": 250,
            "additional_tokens": 50,
            "cost": "0.50",
            "currency": "usd",
            "leads": 30,
            "leads_that_fit": 28,
            "fits": False,
        }
    ai = await client.post(
        "/v1/teams/acme/quote",
        json={"action": "ai_sequence", "quantity": 3, "job_id": "ignored"},
        headers=bearer("member"),
    )
    assert ai.status_code == 200
    assert (ai.json()["tokens"], ai.json()["leads"], ai.json()["fits"]) == (150, None, True)
    section = await ledger.billing("acme", at=NOW)
    assert (section.held, section.free_available, section.recent_charges) == (0, 250, [])


async def test_quote_applies_the_callers_cap(ledger: Ledger, client: httpx.AsyncClient) -> None:
    await make_team(ledger, limit=1000, seats=2, at=NOW)
    await cap(ledger, "bob", 45)
    body = {"action": "debounce", "payload": leads(60)}
    bob = await client.post("/v1/teams/acme/quote", json=body, headers=bearer("member", sub="bob"))
    assert (bob.json()["member"], bob.json()["leads_that_fit"]) == ("bob", 45)
    named = await client.post(
        "/v1/teams/acme/quote", json=body | {"member": "bob"}, headers=bearer("service", None)
    )
    assert named.json()["leads_that_fit"] == 45
    anyone = await client.post("/v1/teams/acme/quote", json=body, headers=bearer("service", None))
    assert (anyone.json()["member"], anyone.json()["fits"]) == (None, True)


async def test_a_quote_is_refused_as_a_jobs_request_is(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    await make_team(ledger, "rival", seats=2, at=NOW)
    ok = {"action": "enrich", "payload": leads(1)}
    cases: list[tuple[str, dict[str, Any], dict[str, str], int, str]] = [
        ("rival", ok, bearer("member"), 403, "forbidden_team"),
        ("nope", ok, bearer("service", None), 404, "unknown_team"),
        ("acme", {"action": "enrich", "quantity": 2}, bearer("member"), 422, "bad_input"),
        ("acme", {"action": "nope"}, bearer("member"), 422, "unknown_action"),
        ("acme", {"action": "enrich", "payload": {"leads": [{}]}}, bearer("member"), 422,
         "bad_input"),
        ("acme", ok | {"bogus": 1}, bearer("member"), 422, "invalid_request"),
        ("acme", ok | {"member": "eve"}, bearer("member", sub="bob"), 403, "forbidden_member"),
    ]  # fmt: skip
    for team, body, headers, status, code in cases:
        response = await client.post(f"/v1/teams/{team}/quote", json=body, headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body


# -- member caps --------------------------------------------------------------


async def test_a_cap_is_set_by_admins_of_the_team_only_and_recorded(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, limit=100, seats=2, at=NOW)
    await make_team(ledger, "rival", seats=2, at=NOW)
    url = "/v1/teams/acme/members/bob/cap"
    ok = await client.put(url, json={"tokens": 30}, headers=bearer("admin", sub="alice"))
    assert ok.status_code == 200, ok.text
    assert ok.json() | {"changed_at": None} == {
        "team": "acme",
        "member": "bob",
        "actor": "alice",
        "role": "admin",
        "old_cap": None,
        "new_cap": 30,
        "changed_at": None,
    }
    refusals: list[tuple[str, dict[str, str], int, str]] = [
        (url, bearer("member", sub="bob"), 403, "forbidden_role"),
        (url, bearer("service", None), 403, "forbidden_role"),
        (url, bearer("admin", "rival"), 403, "forbidden_team"),
        ("/v1/teams/nope/members/bob/cap", bearer("admin", "nope"), 404, "unknown_team"),
    ]
    for where, headers, status, code in refusals:
        refused = await client.put(where, json={"tokens": 0}, headers=headers)
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code), where
    for bad in ({"tokens": -1}, {"tokens": "5"}, {"tokens": 1.5}, {}, {"tokens": 10**13},
                {"tokens": 5, "extra": 1}):  # fmt: skip
        response = await client.put(url, json=bad, headers=bearer("admin"))
        assert response.status_code == 422, bad
        assert set(response.json()["error"]) == {"code", "message"}
    changes = await ledger.member_cap_changes("acme")
    assert [(c.actor, c.member, c.old_cap, c.new_cap) for c in changes] == [
        ("alice", "bob", None, 30)
    ]

    billing = (await client.get("/v1/teams/acme/billing", headers=bearer("member"))).json()
    assert billing["members"] == [{"member": "bob", "spent": 0, "cap": 30, "held": 0, "left": 30}]
    assert billing["forecast"] is not None  # March 10: nine days of the month gone
    assert set(billing["forecast"]) == {
        "free_runs_out",
        "additional_runs_out",
        "projected_additional_cost",
    }

    removed = await client.put(url, json={"tokens": None}, headers=bearer("admin", sub="alice"))
    assert removed.status_code == 200
    assert (removed.json()["old_cap"], removed.json()["new_cap"]) == (30, None)
    billing = (await client.get("/v1/teams/acme/billing", headers=bearer("member"))).json()
    assert billing["members"] == []


async def test_a_team_id_with_a_slash_has_member_caps_too(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, "org/7", seats=2, at=NOW)
    response = await client.put(
        "/v1/teams/org/7/members/bob/cap", json={"tokens": 10}, headers=bearer("admin", "org/7")
    )
    assert response.status_code == 200 and response.json()["team"] == "org/7"
    assert [m.member for m in (await ledger.billing("org/7", at=NOW)).members] == ["bob"]


# -- jobs: their member, only_if_all_fit ---------------------------------------------


async def test_jobs_record_the_member_who_launched_them(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    posts: list[tuple[dict[str, Any], dict[str, str], str | None]] = [
        ({"job_id": "a"}, bearer("member", sub="bob"), "bob"),
        ({"job_id": "b", "member": "ann"}, bearer("admin", sub="ann"), "ann"),
        ({"job_id": "c", "member": "carol"}, bearer("service", None), "carol"),
        ({"job_id": "d"}, bearer("service", None), None),
    ]
    for extra, headers, member in posts:
        body = {"action": "enrich", "payload": leads(1)} | extra
        response = await client.post("/v1/teams/acme/jobs", json=body, headers=headers)
        assert response.status_code == 202
        [job] = response.json()["jobs"]
        info = await Job(job["job_id"], arq_redis, _queue_name=QUEUE).info()
        assert info is not None
        assert info.kwargs == ({} if member is None else {"member": member})
    # A member may not launch jobs under another member's name (and cap).
    refused = await client.post(
        "/v1/teams/acme/jobs",
        json={"action": "enrich", "payload": leads(1), "member": "eve"},
        headers=bearer("member", sub="bob"),
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden_member"
    assert await arq_redis.zcard(QUEUE) == 4


async def test_only_if_all_fit_queues_all_or_nothing(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    await make_team(ledger, seats=1, at=NOW)  # 250 free, no additional: 25 leads of 10
    too_many = {"action": "enrich", "payload": leads(26), "only_if_all_fit": True}
    refused = await client.post("/v1/teams/acme/jobs", json=too_many, headers=bearer("member"))
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "not_enough_tokens" and "25 of 26 leads" in error["message"]
    assert await arq_redis.zcard(QUEUE) == 0

    # Without the flag the same request queues every job (the worker refuses the 26th).
    plain = await client.post(
        "/v1/teams/acme/jobs", json=too_many | {"only_if_all_fit": False, "job_id": "p"},
        headers=bearer("member"),
    )  # fmt: skip
    assert plain.status_code == 202 and await arq_redis.zcard(QUEUE) == 26
    await arq_redis.flushdb()

    fits = {"action": "enrich", "payload": leads(25), "only_if_all_fit": True}
    queued = await client.post("/v1/teams/acme/jobs", json=fits, headers=bearer("member"))
    assert queued.status_code == 202 and len(queued.json()["jobs"]) == 25
    assert await arq_redis.zcard(QUEUE) == 25


async def test_a_replay_of_an_admitted_request_is_not_checked_again(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    await make_team(ledger, seats=1, at=NOW)  # 250 free: 25 leads
    body = {"action": "enrich", "payload": leads(25), "only_if_all_fit": True, "job_id": "all"}
    first = await client.post("/v1/teams/acme/jobs", json=body, headers=bearer("member"))
    assert first.status_code == 202
    # Its jobs run (here: the room is used), then the app sends the request again, as
    # after a 503: the jobs are there, nothing is queued twice, and no 409 says otherwise.
    await ledger.charge("acme", "enrich", 10, key="ran", at=NOW)
    again = await client.post("/v1/teams/acme/jobs", json=body, headers=bearer("member"))
    assert again.status_code == 202, again.text
    assert [j["queued"] for j in again.json()["jobs"]] == [False] * 25
    other = await client.post(
        "/v1/teams/acme/jobs", json=body | {"job_id": "new"}, headers=bearer("member")
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "not_enough_tokens"
    # A refused request claims nothing: sent again, it is checked again (not a replay).
    retry = await client.post(
        "/v1/teams/acme/jobs", json=body | {"job_id": "new"}, headers=bearer("member")
    )
    assert retry.status_code == 409
    assert await arq_redis.zcard(QUEUE) == 25


async def test_only_if_all_fit_names_the_cap_when_the_cap_stops_it(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    await make_team(ledger, limit=1000, seats=2, at=NOW)  # room for 150 leads
    await cap(ledger, "bob", 50)
    body = {"action": "enrich", "payload": leads(6), "only_if_all_fit": True}
    by_bob = await client.post(
        "/v1/teams/acme/jobs", json=body, headers=bearer("member", sub="bob")
    )
    assert by_bob.status_code == 409
    assert by_bob.json()["error"]["code"] == "member_cap"
    assert "5 of 6 leads" in by_bob.json()["error"]["message"]
    named = await client.post(
        "/v1/teams/acme/jobs", json=body | {"member": "bob"}, headers=bearer("service", None)
    )
    assert named.status_code == 409 and named.json()["error"]["code"] == "member_cap"
    # Past the team's room too: the team's refusal comes first.
    huge = body | {"payload": leads(200)}
    both = await client.post("/v1/teams/acme/jobs", json=huge, headers=bearer("member", sub="bob"))
    assert both.json()["error"]["code"] == "not_enough_tokens"
    assert await arq_redis.zcard(QUEUE) == 0
    eve = await client.post("/v1/teams/acme/jobs", json=body, headers=bearer("member", sub="eve"))
    assert eve.status_code == 202 and await arq_redis.zcard(QUEUE) == 6


# -- the worker: the hold carries the member ---------------------------------------


async def test_a_capped_members_job_is_refused_in_the_worker_with_member_cap(
    ledger: Ledger,
    client: httpx.AsyncClient,
    arq_redis: ArqRedis,
    database_url: str,
    redis_url: str,
) -> None:
    await make_team(ledger, limit=1000, seats=2, at=NOW)
    await cap(ledger, "bob", 25)
    posted = await client.post(
        "/v1/teams/acme/jobs",
        json={"action": "enrich", "payload": leads(3), "job_id": "capped"},
        headers=bearer("member", sub="bob"),
    )
    assert posted.status_code == 202
    await run_burst(settings_for(database_url, redis_url))
    ids = [j["job_id"] for j in posted.json()["jobs"]]
    out = [await result(arq_redis, jid) for jid in ids]
    assert sorted(r["status"] for r in out) == ["captured", "captured", "refused"]
    (refused,) = [r for r in out if r["status"] == "refused"]
    assert refused["code"] == "member_cap" and refused["reason"] == "over the member's monthly cap"
    job = ids[out.index(refused)]
    status = (await client.get(f"/v1/jobs/{job}", headers=bearer("member", sub="bob"))).json()
    assert (status["status"], status["result"]["code"], status["charge"]) == (
        "refused",
        "member_cap",
        None,
    )
    history = await ledger.history("acme")
    assert [(c.member, c.state, c.tokens) for c in history] == [("bob", "captured", 10)] * 2
    (bob,) = (await ledger.billing("acme", at=history[0].held_at)).members
    assert (bob.spent, bob.left) == (20, 5)


async def test_without_caps_the_hold_and_capture_are_unchanged(
    ledger: Ledger,
    client: httpx.AsyncClient,
    arq_redis: ArqRedis,
    database_url: str,
    redis_url: str,
) -> None:
    await make_team(ledger, seats=1, at=NOW)  # 250 free, no additional, no caps
    posted = await client.post(
        "/v1/teams/acme/jobs",
        json={"action": "enrich", "payload": leads(26), "job_id": "plain"},
        headers=bearer("member", sub="bob"),
    )
    assert posted.status_code == 202
    await run_burst(settings_for(database_url, redis_url))
    out = [await result(arq_redis, j["job_id"]) for j in posted.json()["jobs"]]
    assert sorted(r["status"] for r in out) == ["captured"] * 25 + ["refused"]
    captured = [r for r in out if r["status"] == "captured"]
    assert all((r["free_tokens"], r["additional_tokens"]) == (10, 0) for r in captured)
    assert "code" not in captured[0]
    (refused,) = [r for r in out if r["status"] == "refused"]
    assert (refused["code"], refused["reason"]) == ("not_enough_tokens", "not enough tokens")
    history = await ledger.history("acme")
    assert len(history) == 25 and {(c.member, c.state) for c in history} == {("bob", "captured")}
    section = await ledger.billing("acme", at=history[0].held_at)
    assert (section.free_spent, section.held, section.members) == (250, 0, [])


@pytest.mark.parametrize("role", ["member", "admin"])
async def test_the_billing_page_shows_caps_and_the_forecast(
    ledger: Ledger, client: httpx.AsyncClient, role: str
) -> None:
    await make_team(ledger, seats=1, limit=1000, at=NOW)
    await cap(ledger, "bob@acme.io", 40)
    await ledger.charge("acme", "enrich", 3, key="k1", at=NOW, member="bob@acme.io")
    signed = await client.get("/teams/acme/billing", params={"token": token(role)})
    assert signed.status_code == 303  # the client keeps the session cookie
    page = await client.get("/teams/acme/billing")
    assert page.status_code == 200
    html = page.text
    assert '<tr data-member="bob@acme.io">' in html
    row = html[html.index('data-member="bob@acme.io"') :].split("</tr>")[0]
    cells = [c.split("</td>")[0].split(">")[-1] for c in row.split("<td")[1:]]
    assert cells == ["bob@acme.io", "30", "0", "40", "10"]  # member, spent, held, cap, left
    assert 'id="forecast-free"' in html and 'id="forecast-cost"' in html
    assert "<script" not in html
