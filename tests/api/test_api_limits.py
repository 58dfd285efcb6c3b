"""What the API takes before it does any work: bodies within their limit, read only for a
caller who proved who it is, and tokens that are what RFC 7519 says they are."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from arq.connections import ArqRedis

from api.app import create_app
from api.services import Services
from ledger import validate
from ledger.errors import BadInput
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
from tests.api_live import LiveApi, live_api
from tests.cli_helpers import Cli
from tests.factories import make_team
from worker.queue import QUEUE

MB = 1024 * 1024


def _signed(claims: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def _claims(**over: Any) -> dict[str, Any]:
    return {"sub": "ann", "team": "acme", "role": "member", "exp": int(time.time()) + 600} | over


# -- tokens ------------------------------------------------------------------------


async def test_exp_must_be_a_number_and_the_lifetime_is_capped(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    now = int(time.time())
    refused = {
        "numeric string": (_claims(exp=str(now + 600)), "invalid_token"),
        "bool": (_claims(exp=True), "invalid_token"),
        "iat a string": (_claims(iat=str(now)), "invalid_token"),
        "10^20": (_claims(exp=10**20), "token_lifetime"),
        "25 h, no iat": (_claims(exp=now + 25 * 3600), "token_lifetime"),
        "24.5 h from iat": (_claims(iat=now - 3600, exp=now + 23 * 3600 + 1800), "token_lifetime"),
        "iat in the future": (_claims(iat=now + 3600, exp=now + 7200), "invalid_token"),
        "nbf in the future": (_claims(nbf=now + 300), "invalid_token"),
        "nbf a string": (_claims(nbf=str(now)), "invalid_token"),
    }
    for name, (claims, code) in refused.items():
        response = await client.get("/v1/teams/acme/billing", headers=_signed(claims))
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"]["code"] == code, name
        if code == "token_lifetime":
            said = response.json()["error"]["message"]
            assert "86400" in said and "shorter-lived" in said
    for name, claims in {
        "23 h, no iat": _claims(exp=now + 23 * 3600),
        "24 h from iat": _claims(iat=now - 60, exp=now + 24 * 3600 - 120),
        "float exp": _claims(exp=now + 600.5),
    }.items():
        ok = await client.get("/v1/teams/acme/billing", headers=_signed(claims))
        assert ok.status_code == 200, (name, ok.text)


async def test_the_lifetime_cap_is_configurable(
    ledger: Ledger, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    settings = settings_for(database_url, redis_url, jwt_max_lifetime_seconds=300)
    svc = services_for(ledger, arq_redis, settings)
    app = create_app(settings, svc)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        long = await c.get("/v1/teams/acme/billing", headers=bearer("member", exp_in=600))
        short = await c.get("/v1/teams/acme/billing", headers=bearer("member", exp_in=240))
    assert long.status_code == 401 and long.json()["error"]["code"] == "token_lifetime"
    assert short.status_code == 200


async def test_the_page_cookie_never_outlives_its_token(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    signed_in = await client.get(
        "/teams/acme/billing", params={"token": token("member", exp_in=1800)}
    )
    assert signed_in.status_code == 303
    cookie = signed_in.headers["set-cookie"]
    max_age = int(cookie.split("Max-Age=")[1].split(";")[0])
    assert 1790 <= max_age <= 1800
    forever = jwt.encode(_claims(exp=10**20), SECRET, algorithm="HS256")
    refused = await client.get("/teams/acme/billing", params={"token": forever})
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    assert "text/html" in refused.headers["content-type"]


# -- ids with a trailing newline ---------------------------------------------------------


async def test_a_team_id_with_a_trailing_newline_is_refused_everywhere(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    body = {"plan": "trial", "seats": 1, "interval": "month", "anchor": "2026-03-01T00:00:00Z"}
    # Starlette's route patterns end in `$`: the newline would have been dropped.
    for path in ("/v1/teams/newteam%0A", "/v1/teams/newteam%0D%0A", "/v1/teams/new%00team"):
        put = await client.put(path, json=body, headers=bearer("service", None))
        assert put.status_code == 400 and put.json()["error"]["code"] == "bad_path", put.text
    assert await ledger.pool.fetchval("SELECT count(*) FROM teams") == 0
    await make_team(ledger, seats=2, at=NOW)
    for path in ("/v1/teams/acme%0A/billing", "/v1/jobs/acme~x%0A", "/teams/acme%0A/billing"):
        got = await client.get(path, headers=bearer("member"))
        assert got.status_code == 400, path
    job = await client.post(
        "/v1/teams/acme/jobs",
        json={"action": "ai_sequence", "job_id": "j1\n"},
        headers=bearer("member"),
    )
    assert job.status_code == 422 and "job_id" in job.json()["error"]["message"]


async def test_the_cli_and_webhooks_refuse_a_team_id_with_a_trailing_newline(
    ledger: Ledger, cli: Cli
) -> None:
    refused = await asyncio.to_thread(
        cli, "team", "set", "newteam\n", "--plan", "trial", "--seats", "1",
        "--interval", "month", "--anchor", "2026-03-01",
    )  # fmt: skip
    assert refused.code != 0 and "invalid team id" in refused.err
    assert refused.err.count("\n") == 1  # one line
    assert await ledger.pool.fetchval("SELECT count(*) FROM teams") == 0
    for bad in ("acme\n", "acme\r\n", "\nacme"):
        with pytest.raises(BadInput):
            validate.team_id(bad)


# -- bodies --------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_a_413_before_authentication(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    # Content-Length says it all: no token needed to be told, nothing read.
    declared = await client.put(
        "/v1/teams/acme/limit",
        content=b'{"tokens": 1}' + b" " * (64 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"
    # Within the limit but anonymous: a 401, whatever the body.
    anonymous = await client.put("/v1/teams/acme/limit", json={"tokens": 1})
    assert anonymous.status_code == 401
    # A streamed body (no Content-Length) is counted as it comes.

    async def stream() -> Any:
        for _ in range(20):
            yield b" " * (512 * 1024)

    streamed = await client.post(
        "/v1/teams/acme/jobs",
        content=stream(),
        headers=bearer("member") | {"Content-Type": "application/json"},
    )
    assert streamed.status_code == 413, streamed.text
    assert "8388608 bytes" in streamed.json()["error"]["message"]
    assert await arq_redis.zcard(QUEUE) == 0
    assert (await ledger.get_team("acme")).additional_limit == 0


async def test_ten_thousand_full_leads_fit_in_the_default_limit(
    ledger: Ledger, client: httpx.AsyncClient, arq_redis: ArqRedis
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    lead = {
        "email": "firstname.lastname@a-rather-long-company-name.example.com",
        "first_name": "Maximilian-Alexander",
        "last_name": "Featherstonehaugh-Wolfeschlegel",
        "company_domain": "a-rather-long-company-name.example.com",
        "linkedin_url": "https://www.linkedin.com/in/maximilian-alexander-featherstonehaugh-0123456789",
    }
    payload = {"leads": [{"id": f"crm-lead-{n:08d}"} | lead for n in range(10_000)]}
    body = json.dumps({"action": "enrich", "payload": payload}).encode()
    assert len(body) > 2 * MB
    response = await client.post(
        "/v1/teams/acme/jobs",
        content=body,
        headers=bearer("member") | {"Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text[:200]
    assert await arq_redis.zcard(QUEUE) == 10_000


async def test_the_limits_are_configurable(
    ledger: Ledger, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    settings = settings_for(database_url, redis_url, max_jobs_body_bytes=1000)
    svc: Services = services_for(ledger, arq_redis, settings)
    app = create_app(settings, svc)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        small = await c.post(
            "/v1/teams/acme/jobs", json={"action": "ai_sequence"}, headers=bearer("member")
        )
        big = await c.post(
            "/v1/teams/acme/jobs",
            json={"action": "ai_sequence", "payload": {"prompt": "x" * 1000}},
            headers=bearer("member"),
        )
    assert small.status_code == 202 and big.status_code == 413


async def test_a_body_that_is_not_json_is_told_so(
    ledger: Ledger, client: httpx.AsyncClient
) -> None:
    await make_team(ledger, seats=2, at=NOW)
    json_type = {"Content-Type": "application/json"}
    cases = {
        "bad json": (
            b'{"tokens": 1,,}',
            json_type,
            "the request body is not valid JSON at character",
        ),
        "no content type": (b'{"tokens": 1}', {}, "Content-Type: application/json"),
        "a list": (b"[1]", json_type, "the request body must be a JSON object"),
        "empty": (b"", json_type, "a JSON object body is required"),
    }
    for name, (content, headers, said) in cases.items():
        response = await client.put(
            "/v1/teams/acme/limit", content=content, headers=bearer("admin") | headers
        )
        assert response.status_code == 422, name
        message = response.json()["error"]["message"]
        assert said in message, (name, message)
        assert "JSON decode error" not in message and "valid dictionary" not in message


# -- the real server: 30 MB from anyone -------------------------------------------------


def _rss_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        got = sock.recv(4096)
        if not got:
            raise AssertionError(f"connection closed without an answer: {head!r}")
        head += got
    return int(head.split(b" ", 2)[1])


def _send(port: int, method: str, path: str, headers: dict[str, str], body: int) -> tuple[int, int]:
    """Send `body` bytes (chunked when no Content-Length is given) until the server
    answers: (its status, the body bytes sent by then)."""
    import select

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunked = "Content-Length" not in headers
        sent, piece = 0, b"x" * (64 * 1024)
        while sent < body:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came: no need to send the rest
            frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        return _status(sock), sent
    finally:
        sock.close()


def _body_routes(live: LiveApi) -> list[tuple[str, str]]:
    doc = httpx.get(f"{live.base_url}/openapi.json").json()
    routes = [
        (method.upper(), path.replace("{team}", "acme"))
        for path, ops in doc["paths"].items()
        for method in ops
        if method in ("post", "put", "patch")
    ]
    return [*routes, ("POST", "/teams/acme/billing/limit")]  # the page's form


def test_thirty_megabytes_from_anyone_are_refused_at_once_in_bounded_memory(
    live_api: LiveApi,
) -> None:
    port = int(live_api.base_url.rsplit(":", 1)[1])
    pid = live_api.process.pid
    routes = _body_routes(live_api)
    assert len(routes) >= 5, routes
    # Warm up every route once, so that what grows below is the bodies' doing.
    for method, path in routes:
        _send(port, method, path, {"Content-Length": "2"}, 2)
    before = _rss_peak_kb(pid)
    thirty = 30 * MB
    for method, path in routes:
        # Declared: a 413 with not one byte of the body sent.
        started = time.monotonic()
        status, sent = _send(port, method, path, {"Content-Length": str(thirty)}, 0)
        assert (status, sent) == (413, 0), (method, path)
        assert time.monotonic() - started < 2, (method, path)
        # Streamed, anonymous: 401 before any body, but where the body is the proof
        # (the webhook's signature): there, a 413 once the limit is passed.
        status, sent = _send(port, method, path, {"Transfer-Encoding": "chunked"}, thirty)
        if path == "/v1/stripe/webhook":
            assert status == 413 and sent < thirty, (method, path, sent)
        else:
            assert status == 401, (method, path, status)
            assert sent < 8 * MB, (method, path, sent)  # what the socket buffers took at most
    # Streamed by a caller with a valid token: counted, and cut off at the limit.
    headers = {"Transfer-Encoding": "chunked", "Authorization": f"Bearer {token('service', None)}"}
    for _round in range(4):
        status, sent = _send(port, "POST", "/v1/teams/acme/jobs", headers, thirty)
        assert status == 413 and sent < thirty, sent
    grown_mb = (_rss_peak_kb(pid) - before) / 1024
    # One request holds at most its limit (8 MB for jobs) twice over; 30 MB parsed costs
    # hundreds.
    assert grown_mb < 64, grown_mb
