"""schemathesis over /openapi.json against `tokens serve` as a real process: every
operation, with valid tokens, never answers 5xx and always answers as documented."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.api_helpers import token
from tests.api_live import LiveApi, live_api

pytestmark = pytest.mark.process

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
EXAMPLES = 40
_turn = itertools.count()


def _token_for(method: str, path: str, team: str | None) -> str:
    """A valid token that may do what the operation needs."""
    if method == "PUT" and path in (
        "/v1/teams/{team}/limit",
        "/v1/teams/{team}/members/{member}/cap",
    ):
        return token("admin", team, sub="fuzzer")
    return token("service", None, sub="fuzzer")


# Anyone else: the refusals (401, 403, 404) are answers as documented too, never a 5xx.
OTHER_CALLERS: list[dict[str, str]] = [
    {"Authorization": f"Bearer {token('member', 'acme', sub='fuzzer')}"},
    {"Authorization": f"Bearer {token('admin', 'other', sub='fuzzer')}"},
    {"Authorization": "Bearer not.a.jwt"},
    {},
]


def _call(case: schemathesis.Case, anyone: bool = False) -> int:
    team = (case.path_parameters or {}).get("team")
    real = next(_turn) % 2 == 0  # half the cases on real data, so the 2xx answers come too
    if team is not None and real:
        case.path_parameters = {**(case.path_parameters or {}), "team": "acme"}
        team = "acme"
    if isinstance(case.body, dict) and "plan" in case.body and real:
        # A plan of the catalog, the seeded teams' anchor (the range is 2000-2199), a Stripe id
        # without spaces: the schema cannot say all of it, the fuzzer's 2xx answers need it.
        case.body = {**case.body, "plan": "sales_engagement", "anchor": "2026-01-01T00:00:00Z"}
        if case.body.get("stripe_customer") is not None:
            case.body["stripe_customer"] = "cus_fuzz"
    if case.path == "/v1/teams/{team}/quote" and isinstance(case.body, dict) and real:
        # An action of the catalog, with the default prompt: a quote the fuzzer's 200 needs.
        case.body = {"action": "ai_sequence", "quantity": case.body.get("quantity")}
    headers = {"Authorization": f"Bearer {_token_for(case.method, case.path, team)}"}
    if anyone:
        headers = OTHER_CALLERS[next(_turn) % len(OTHER_CALLERS)]
    response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
    return int(response.status_code)


def _fuzz(operation: Any, seen: set[int], anyone: bool = False) -> Callable[[], None]:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES // 2 if anyone else EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        seen.add(_call(case, anyone))

    return run  # type: ignore[no-any-return]


def test_every_operation_answers_as_documented(live_api: LiveApi) -> None:
    # schemathesis's pytest plugin does not run under pytest 9 (it reads Function._nodeid);
    # its strategies under hypothesis do the same work.
    schema = schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")
    statuses: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        seen = statuses.setdefault(f"{operation.method.upper()} {operation.path}", set())

        _fuzz(operation, seen)()
    assert len(statuses) >= 11
    # Every operation was exercised, and the successful answers were reached too.
    assert all(statuses.values()), statuses
    reached = {op for op, codes in statuses.items() if codes & {200, 201, 202}}
    assert {
        "GET /v1/teams/{team}/billing",
        "GET /v1/teams/{team}/history",
        "GET /v1/teams/{team}/history.csv",
        "PUT /v1/teams/{team}/limit",
        "PUT /v1/teams/{team}",
        "POST /v1/teams/{team}/quote",
        "PUT /v1/teams/{team}/members/{member}/cap",
        "GET /healthz",
    } <= reached, sorted(statuses.items())


def test_every_operation_refuses_anyone_else_as_documented(live_api: LiveApi) -> None:
    schema = schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")
    statuses: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        seen = statuses.setdefault(f"{operation.method.upper()} {operation.path}", set())
        _fuzz(operation, seen, anyone=True)()
    codes = set().union(*statuses.values())
    assert {401, 403} <= codes and not any(c >= 500 for c in codes), statuses


def test_the_document_names_every_endpoint(live_api: LiveApi) -> None:
    import httpx

    doc = httpx.get(f"{live_api.base_url}/openapi.json").json()
    paths = set(doc["paths"])
    assert {
        "/v1/teams/{team}/billing",
        "/v1/teams/{team}/history",
        "/v1/teams/{team}/history.csv",
        "/v1/teams/{team}/alerts",
        "/v1/teams/{team}/limit",
        "/v1/teams/{team}",
        "/v1/teams/{team}/jobs",
        "/v1/teams/{team}/quote",
        "/v1/teams/{team}/members/{member}/cap",
        "/v1/jobs/{job_id}",
        "/v1/teams/{team}/bills",
        "/v1/bills/{bill_id}",
        "/v1/stripe/webhook",
        "/healthz",
    } <= paths
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_every_json_route_returns_its_response_model() -> None:
    """The document's answers are the routes' own models, not a description beside a dict."""
    from fastapi.responses import HTMLResponse, Response
    from fastapi.routing import APIRoute
    from pydantic import BaseModel

    from api.app import create_app
    from runtime.config import Settings

    def api_routes(routes: list[Any]) -> list[APIRoute]:
        found: list[APIRoute] = []
        for route in routes:
            if isinstance(route, APIRoute):
                found.append(route)
            elif hasattr(route, "original_router"):  # a router included in the app
                found += api_routes(route.original_router.routes)
        return found

    routes = api_routes(create_app(Settings()).routes)
    json_routes = [
        r
        for r in routes
        if r.include_in_schema and r.response_class not in (Response, HTMLResponse)
    ]
    assert len(json_routes) >= 14
    for route in json_routes:
        model = route.response_model
        assert isinstance(model, type) and issubclass(model, BaseModel), route.path
        assert model.model_config.get("extra") == "forbid", route.path
