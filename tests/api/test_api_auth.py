"""Authorization matrix: each role x each endpoint x own and other team, and every way a
token can be bad. A refused request changes nothing."""

from __future__ import annotations

import base64
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from arq.connections import ArqRedis

from billing.reconcile import create_bills
from ledger.service import Ledger
from tests.api_helpers import (
    NOW,
    SECRET,
    api_services,
    arq_redis,
    client,
    token,
)
from tests.clock import at
from tests.factories import make_team
from worker.queue import QUEUE

OWN, OTHER = "acme", "other"
ROLES = ("member", "admin", "service")
TEAM_BODY = {"plan": "email_outreach", "seats": 4, "interval": "month", "anchor": "2026-01-01"}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {team}, {job} and {bill} are filled in
    allowed: tuple[str, ...]
    ok: int = 200
    body: dict[str, Any] | None = None
    by_path: bool = True  # False: the team is the job's or the bill's, not in the path


# The bad-token test below runs on these; the matrix runs on the OpenAPI document.
ENDPOINTS = [
    Endpoint("GET", "/v1/teams/{team}/billing", ROLES),
    Endpoint("GET", "/v1/teams/{team}/history", ROLES),
    Endpoint("GET", "/v1/teams/{team}/history.csv", ROLES),
    Endpoint("GET", "/v1/teams/{team}/alerts", ROLES),
    Endpoint("PUT", "/v1/teams/{team}/limit", ("admin",), body={"tokens": 10}),
    Endpoint("PUT", "/v1/teams/{team}", ("service",), body=TEAM_BODY),
    Endpoint("POST", "/v1/teams/{team}/jobs", ROLES, 202, {"action": "ai_sequence"}),
    Endpoint("GET", "/v1/teams/{team}/bills", ("admin", "service")),
    Endpoint("GET", "/v1/jobs/{job}", ROLES, by_path=False),
    Endpoint("GET", "/v1/bills/{bill}", ("admin", "service"), by_path=False),
]


async def _world(ledger: Ledger, client: httpx.AsyncClient) -> dict[str, str]:
    """Both teams, a job and a bill of each."""
    ids: dict[str, str] = {}
    for team in (OWN, OTHER):
        await make_team(ledger, team, seats=1, limit=1000, at=NOW)
        await ledger.charge(team, "ai_sequence", 10, key="k", at=NOW)
        queued = await client.post(
            f"/v1/teams/{team}/jobs",
            json={"action": "ai_sequence", "job_id": "job-1"},  # the same id: two jobs
            headers={"Authorization": f"Bearer {token('service', None)}"},
        )
        assert queued.status_code == 202
        ids[f"job:{team}"] = queued.json()["jobs"][0]["job_id"]
    assert ids[f"job:{OWN}"] != ids[f"job:{OTHER}"]
    for bill in await create_bills(ledger.pool, team=None, at=at("2026-04-02")):
        ids[f"bill:{bill.team_id}"] = str(bill.id)
    return ids


def _url(ep: Endpoint, team: str, ids: dict[str, str]) -> str:
    return ep.path.format(team=team, job=ids[f"job:{team}"], bill=ids.get(f"bill:{team}", "0"))


async def _state(ledger: Ledger, redis: ArqRedis) -> tuple[Any, ...]:
    """Every ledger table's rows (a digest each) and the queue: what a refusal must not
    change."""
    tables = await ledger.pool.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
    )
    digests = []
    for row in tables:
        name = row["table_name"]
        digests.append(
            await ledger.pool.fetchval(
                f"SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' "
                f"ORDER BY t::text)), '') FROM \"{name}\" t"
            )
        )
    return (tuple(digests), await redis.zcard(QUEUE), await redis.dbsize())


# -- the matrix, generated from the OpenAPI document --------------------------------


@dataclass(frozen=True)
class Rule:
    roles: tuple[str, ...]  # who may; () for a route without a JWT
    ok: int = 200
    body: dict[str, Any] | None = None
    creates: bool = False  # an unknown team is created (201), not a 404
    public: int | None = None  # the status of a route without a JWT, for anyone
    listing: bool = False  # no object in the path: the same answer for every owner


# Who may do what (README "The HTTP API and the billing page"). Every operation of the
# document must be here: a new route fails this test until its row says who may call it.
RULES = {
    "GET /v1/teams/{team}/billing": Rule(ROLES),
    "GET /v1/teams/{team}/history": Rule(ROLES),
    "GET /v1/teams/{team}/history.csv": Rule(ROLES),
    "GET /v1/teams/{team}/alerts": Rule(ROLES),
    "GET /v1/teams/{team}/bills": Rule(("admin", "service")),
    "PUT /v1/teams/{team}/limit": Rule(("admin",), body={"tokens": 10}),
    "PUT /v1/teams/{team}": Rule(("service",), body=TEAM_BODY, creates=True),
    "POST /v1/teams/{team}/jobs": Rule(ROLES, 202, {"action": "ai_sequence"}),
    "GET /v1/jobs/{job_id}": Rule(ROLES),
    "GET /v1/teams": Rule(("service",), listing=True),
    "POST /v1/teams/{team}/quote": Rule(ROLES, body={"action": "ai_sequence"}),
    "PUT /v1/teams/{team}/members/{member}/cap": Rule(("admin",), body={"tokens": 10}),
    "GET /v1/bills/{bill_id}": Rule(("admin", "service")),
    "POST /v1/stripe/webhook": Rule((), body={"id": "evt_1"}, public=400),  # no signature
    "GET /healthz": Rule((), public=200),
}

# (name, role, team): no token, a bad one, each role of acme and of the other team.
CALLERS: list[tuple[str, str | None, str | None]] = [
    ("no token", None, None),
    ("bad token", "bad", None),
    ("member of acme", "member", OWN),
    ("admin of acme", "admin", OWN),
    ("member of other", "member", OTHER),
    ("admin of other", "admin", OTHER),
    ("service", "service", None),
]
OBJECTS = (OWN, OTHER, None)  # acme's, the other team's, an unknown one


def _headers(role: str | None, team: str | None) -> dict[str, str]:
    if role is None:
        return {}
    if role == "bad":
        return {"Authorization": f"Bearer {token('admin', OWN, secret='not-the-secret' * 3)}"}
    return {"Authorization": f"Bearer {token(role, team)}"}


def _target(path: str, owner: str | None, ids: dict[str, str], n: int) -> str:
    path = path.replace("{member}", "bob")
    if "{team}" in path:
        return path.replace("{team}", owner or f"ghost{n}")
    if "{job_id}" in path:
        return path.replace("{job_id}", ids[f"job:{owner}"] if owner else f"{OWN}~nope{n}")
    if "{bill_id}" in path:
        return path.replace("{bill_id}", ids[f"bill:{owner}"] if owner else str(900_000 + n))
    return path


def _expected(op: str, rule: Rule, role: str | None, team: str | None, owner: str | None) -> int:
    if rule.public is not None:
        return rule.public
    if role in (None, "bad"):
        return 401
    if role not in rule.roles:
        return 403
    if rule.listing:
        return rule.ok
    in_path = "{team}" in op
    if role == "service" or team == owner:
        if owner is None:
            return 201 if rule.creates else 404
        return rule.ok
    # A team's member or admin, on another team's (or no team's) object.
    return 403 if in_path else 404


async def test_every_operation_by_every_caller_on_every_object(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    ids = await _world(ledger, client)
    document = client._transport.app.openapi()  # type: ignore[attr-defined]
    operations = [
        f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops
    ]
    assert sorted(operations) == sorted(RULES), "a route without its row in RULES"
    seen: dict[int, int] = {}
    n = 0
    for op in operations:
        rule = RULES[op]
        method, path = op.split(" ", 1)
        for name, role, team in CALLERS:
            for owner in OBJECTS:
                n += 1
                url = _target(path, owner, ids, n)
                before = await _state(ledger, arq_redis)
                response = await client.request(
                    method, url, json=rule.body, headers=_headers(role, team)
                )
                want = _expected(path, rule, role, team, owner)
                where = (op, name, owner, response.text[:200])
                assert response.status_code == want, where
                seen[want] = seen.get(want, 0) + 1
                if want >= 400:
                    assert await _state(ledger, arq_redis) == before, where
                    error = response.json()["error"]
                    assert set(error) == {"code", "message"}, where
                    _no_other_team_named(error["message"], url, team)
                if want == 404 and "{team}" not in path:
                    _like_unknown(path, url, error)
    # Each outcome occurs: the matrix is not one answer everywhere.
    assert {200, 201, 202, 400, 401, 403, 404} <= set(seen), seen
    assert n == len(RULES) * len(CALLERS) * len(OBJECTS)


def _no_other_team_named(message: str, url: str, team: str | None) -> None:
    """What a refusal says names no team but the caller's own, beyond what was asked."""
    said = message.replace(url.rsplit("/", 1)[-1], "")
    for other in (OWN, OTHER):
        if other != team:
            assert other not in said, (message, team)


def _like_unknown(path: str, url: str, error: dict[str, str]) -> None:
    """Another tenant's job or bill answers exactly as an unknown one."""
    asked = url.rsplit("/", 1)[-1]
    if "{job_id}" in path:
        assert error == {"code": "unknown_job", "message": f"unknown job {asked!r}"}
    else:
        assert error == {"code": "unknown_bill", "message": f"unknown bill {asked}"}


def _unsigned(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _hs512(claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():  # the test secret is short for SHA-512: beside the point
        warnings.simplefilter("ignore")
        return jwt.encode(claims, SECRET, algorithm="HS512")


def _bad_tokens() -> dict[str, str | None]:
    claims = {"sub": "ann", "team": OWN, "role": "admin", "exp": int(time.time()) + 3600}
    return {
        "missing": None,
        "expired": token("admin", OWN, exp_in=-10),
        "wrong secret": token("admin", OWN, secret="another-secret-0123456789abcdefghij"),
        "alg none": _unsigned(claims),
        "HS512": _hs512(claims),
        "no exp": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, SECRET, "HS256"),
        "garbage": "not.a.jwt",
    }


async def test_bad_tokens_are_401_on_every_endpoint_and_change_nothing(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    ids = await _world(ledger, client)
    before = await _state(ledger, arq_redis)
    for name, bad in _bad_tokens().items():
        headers = {"Authorization": f"Bearer {bad}"} if bad is not None else {}
        for ep in ENDPOINTS:
            response = await client.request(
                ep.method, _url(ep, OWN, ids), json=ep.body, headers=headers
            )
            assert response.status_code == 401, (name, ep.path, response.text)
            error = response.json()["error"]
            assert error["code"] in ("missing_token", "invalid_token", "token_expired"), name
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert await _state(ledger, arq_redis) == before
    basic = await client.get("/v1/teams/acme/billing", headers={"Authorization": "Basic YW5uOnB3"})
    assert basic.status_code == 401


async def test_a_role_the_api_does_not_know_is_refused(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, OWN, seats=2, at=NOW)
    response = await client.get(
        "/v1/teams/acme/billing", headers={"Authorization": f"Bearer {token('owner', OWN)}"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden_role"
