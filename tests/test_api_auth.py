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
    make_team,
    token,
)
from tests.conftest import at
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
        await make_team(ledger, team, seats=1, limit=1000)
        await ledger.charge(team, "ai_sequence", 10, key="k", at=NOW)
        queued = await client.post(
            f"/v1/teams/{team}/jobs",
            json={"action": "ai_sequence", "job_id": f"job-{team}"},
            headers={"Authorization": f"Bearer {token('service', None)}"},
        )
        assert queued.status_code == 202
        ids[f"job:{team}"] = f"job-{team}"
    for bill in await create_bills(ledger.pool, team=None, at=at("2026-04-02")):
        ids[f"bill:{bill.team_id}"] = str(bill.id)
    return ids


def _url(ep: Endpoint, team: str, ids: dict[str, str]) -> str:
    return ep.path.format(team=team, job=ids[f"job:{team}"], bill=ids.get(f"bill:{team}", "0"))


async def _state(ledger: Ledger, redis: ArqRedis) -> tuple[Any, ...]:
    teams = [await ledger.get_team(t) for t in (OWN, OTHER)]
    return (
        tuple((t.additional_limit, t.seats) for t in teams),
        await redis.zcard(QUEUE),
        len(await ledger.limit_changes(OWN)) + len(await ledger.limit_changes(OTHER)),
    )


async def test_each_role_on_each_endpoint_for_its_own_and_another_team(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    ids = await _world(ledger, client)
    seen: list[tuple[str, str, str, int]] = []
    for ep in ENDPOINTS:
        for role in ROLES:
            for target in (OWN, OTHER):
                # A member or admin of `acme`; `service` carries no team.
                headers = {
                    "Authorization": f"Bearer {token(role, None if role == 'service' else OWN)}"
                }
                before = await _state(ledger, arq_redis)
                response = await client.request(
                    ep.method, _url(ep, target, ids), json=ep.body, headers=headers
                )
                allowed = role in ep.allowed and (role == "service" or target == OWN)
                expected = {ep.ok} | ({201} if ep.method == "PUT" and ep.ok == 200 else set())
                if allowed:
                    assert response.status_code in expected, (ep.path, role, target, response.text)
                else:
                    assert response.status_code == 403, (ep.path, role, target, response.text)
                    assert response.json()["error"]["code"] in ("forbidden_role", "forbidden_team")
                    assert await _state(ledger, arq_redis) == before, (ep.path, role, target)
                seen.append((ep.path, role, target, response.status_code))
    assert len(seen) == len(ENDPOINTS) * 6
    # The matrix is not trivially one answer: both outcomes occur for every role.
    for role in ROLES:
        codes = {code for _, r, _, code in seen if r == role}
        assert 403 in codes and codes & {200, 201, 202}, role


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
    await make_team(ledger, OWN)
    response = await client.get(
        "/v1/teams/acme/billing", headers={"Authorization": f"Bearer {token('owner', OWN)}"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden_role"
