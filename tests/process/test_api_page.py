"""`tokens serve` as a real process: plain HTTP, and the billing page in a real headless
Chromium (Playwright). Screenshots for docs/: TOKENS_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.api_helpers import token
from tests.api_live import ROOT, TOKENS, LiveApi, live_api
from tests.browser import CHROMIUM, NoBrowser, ensure_chromium

pytestmark = pytest.mark.process

ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = ROOT / "docs"
PHONE = {"width": 390, "height": 844}


async def cli_json(live: LiveApi, *args: str) -> Any:
    """`tokens ARGS --json`, the installed command, on the server's database."""
    proc = await asyncio.to_thread(
        subprocess.run,
        [*TOKENS, *args, "--json"],
        env=live.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


async def cli_billing(live: LiveApi, team: str = "acme") -> dict[str, Any]:
    out: dict[str, Any] = await cli_json(live, "billing", team)
    return out


async def cli_alerts(live: LiveApi, team: str = "acme") -> list[dict[str, Any]]:
    """The team's alerts of the current billing month, newest first."""
    period = (await cli_billing(live, team))["period_start"]
    out: list[dict[str, Any]] = await cli_json(live, "alerts", team)
    return [a for a in out if a["period_start"] == period]


async def test_the_real_process_serves_the_contract(live_api: LiveApi) -> None:
    async with httpx.AsyncClient(base_url=live_api.base_url) as c:
        health = await c.get("/healthz")
        billing = await c.get(
            "/v1/teams/acme/billing", headers={"Authorization": f"Bearer {token('member')}"}
        )
        refused = await c.get("/v1/teams/acme/billing")
        doc = await c.get("/openapi.json")
        metrics = await c.get("/metrics")
    assert health.json()["status"] == "ok"
    assert billing.status_code == 200
    assert billing.json() == await cli_billing(live_api)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_token"
    assert doc.json()["info"]["title"] == "Tokens"
    assert "tokens_http_request_seconds" in metrics.text


async def test_the_real_process_reaches_a_team_whose_id_holds_a_slash(live_api: LiveApi) -> None:
    # uvicorn decodes %2F before routing: the team id is whatever precedes the route's suffix.
    async with httpx.AsyncClient(base_url=live_api.base_url) as c:
        created = await c.put(
            "/v1/teams/org%2F7",
            json={"plan": "trial", "seats": 1, "interval": "month", "anchor": "2026-01-01"},
            headers={"Authorization": f"Bearer {token('service', None)}"},
        )
        billing = await c.get(
            "/v1/teams/org%2F7/billing",
            headers={"Authorization": f"Bearer {token('member', 'org/7')}"},
        )
        # The token moves to a cookie, then the page comes back without it in its address.
        page = await c.get(
            f"/teams/org%2F7/billing?token={token('admin', 'org/7')}", follow_redirects=True
        )
    assert created.status_code == 201, created.text
    assert billing.status_code == 200
    assert billing.json() == await cli_billing(live_api, "org/7")
    assert page.status_code == 200 and page.history[0].status_code == 303
    assert 'action="/teams/org/7/billing/limit"' in page.text


async def test_serve_refuses_to_start_without_the_app_secret(live_api: LiveApi) -> None:
    env = {k: v for k, v in live_api.env().items() if k != "TOKENS_APP_SECRET"}
    proc = await asyncio.to_thread(
        subprocess.run,
        [*TOKENS, "serve", "--port", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "tokens: error: TOKENS_APP_SECRET is not set: the API cannot verify any token"
    ]


@pytest.fixture(scope="session")
def chromium() -> Path:
    # A failure, not a skip: the page's tests are how we know it works.
    try:
        return ensure_chromium(CHROMIUM)
    except NoBrowser as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(chromium), args=ARGS)
        try:
            yield b
        finally:
            await b.close()


async def _text(page: Any, selector: str) -> str:
    return str((await page.locator(selector).inner_text()).strip())


async def _limit_changes(live: LiveApi) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(live.database_url)
    try:
        rows = await conn.fetch(
            "SELECT actor, new_limit FROM limit_changes WHERE team_id = 'acme' ORDER BY id"
        )
    finally:
        await conn.close()
    return [(r["actor"], r["new_limit"]) for r in rows]


async def test_an_admin_changes_the_limit_through_the_form(live_api: LiveApi, browser: Any) -> None:
    # No JavaScript at all: the page and its form work without it.
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    start = f"{live_api.base_url}/teams/acme/billing?token={token('admin', sub='alice')}"
    response = await page.goto(start)
    assert response is not None and response.status == 200
    assert page.url == f"{live_api.base_url}/teams/acme/billing"  # the token left the address
    [cookie] = await context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "tokens_session",
        True,
        "Strict",
    )
    cli = await cli_billing(live_api)
    for selector, key in [
        ("#free-available", "free_available"),
        ("#free-spent", "free_spent"),
        ("#free-granted", "free_granted"),
        ("#additional-limit", "additional_limit"),
        ("#additional-available", "additional_available"),
        ("#additional-spent", "additional_spent"),
    ]:
        assert await _text(page, selector) == str(cli[key]), selector
    assert await _text(page, "#additional-spent-usd") == f"${cli['additional_spent_usd']}"
    assert await _text(page, "#additional-limit-usd") == f"${cli['additional_limit_usd']}"
    assert await page.locator("#history tbody tr").count() == 25  # one page of 30 charges
    # The month's usage alerts, as `tokens alerts` has them.
    alerts = await cli_alerts(live_api)
    shown = page.locator("#alerts li")
    assert await shown.count() == len(alerts) > 0
    for i, a in enumerate(alerts):
        item = shown.nth(i)
        assert await item.get_attribute("data-kind") == a["kind"]
        assert await item.get_attribute("data-level") == str(a["level"])
    if os.environ.get("TOKENS_UPDATE_SCREENSHOTS"):
        await page.screenshot(path=str(DOCS / "billing-page-desktop.png"), full_page=True)

    await page.locator("#older").click()
    assert await page.locator("#history tbody tr").count() == 5
    await page.locator("#newest").click()

    await page.fill("#limit-tokens", "2500")
    await page.locator("#limit-form button").click()
    assert page.url.endswith("/teams/acme/billing?saved=1"), await page.content()
    assert await page.locator("#saved").count() == 1
    assert await _text(page, "#additional-limit") == "2500"
    assert await _text(page, "#additional-limit-usd") == "$25.00"
    after = await cli_billing(live_api)
    assert (after["additional_limit"], after["additional_limit_usd"]) == (2500, "25.00")
    assert (await _limit_changes(live_api))[-1] == ("alice", 2500)

    # The browser itself refuses a negative number (min="0"); the server does too.
    csrf = await page.locator("input[name=csrf]").get_attribute("value")
    for typed, says in (("-3", "cannot be negative"), ("\uff17", "whole number")):  # a full-width 7
        bad = await context.request.post(
            f"{live_api.base_url}/teams/acme/billing/limit", form={"tokens": typed, "csrf": csrf}
        )
        assert bad.status == 422 and 'id="form-error"' in await bad.text()
        assert says in await bad.text(), typed
    assert (await cli_billing(live_api))["additional_limit"] == 2500
    await context.close()


async def test_a_member_sees_no_form_and_forged_posts_are_refused(
    live_api: LiveApi, browser: Any
) -> None:
    before = await _limit_changes(live_api)
    limit = (await cli_billing(live_api))["additional_limit"]
    member = await browser.new_context()
    page = await member.new_page()
    await page.goto(f"{live_api.base_url}/teams/acme/billing?token={token('member', sub='bob')}")
    assert await page.locator("#limit-form").count() == 0
    assert await page.locator("#limit-readonly").count() == 1
    assert await _text(page, "#additional-limit") == str(limit)
    # The member posts the form anyway, with the session cookie: no CSRF token, no admin.
    url = f"{live_api.base_url}/teams/acme/billing/limit"
    forged = await member.request.post(url, form={"tokens": "99999", "csrf": "x"})
    assert forged.status == 403
    await member.close()

    # An admin's session, but the form comes from elsewhere: a wrong CSRF token...
    admin = await browser.new_context()
    page = await admin.new_page()
    await page.goto(f"{live_api.base_url}/teams/acme/billing?token={token('admin', sub='eve')}")
    wrong = await admin.request.post(url, form={"tokens": "99999", "csrf": "0" * 64})
    assert wrong.status == 403
    # ...and a form on another site (localhost is not 127.0.0.1): SameSite=Strict keeps the
    # cookie home, so the post arrives anonymous.
    await page.goto(live_api.base_url.replace("127.0.0.1", "localhost") + "/healthz")
    await page.set_content(
        f'<form id="f" method="post" action="{url}"><input name="tokens" value="99999">'
        '<input name="csrf" value="x"></form>'
    )
    async with page.expect_navigation():
        await page.evaluate("document.getElementById('f').submit()")
    assert "missing_token" in await page.content()
    await admin.close()
    assert await _limit_changes(live_api) == before
    assert (await cli_billing(live_api))["additional_limit"] == limit


async def test_the_page_fits_a_phone(live_api: LiveApi, browser: Any) -> None:
    context = await browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = await context.new_page()
    await page.goto(f"{live_api.base_url}/teams/acme/billing?token={token('admin')}")
    widths = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths  # no sideways scrolling of the page
    boxes = [await page.locator(f"#panel-{p}").bounding_box() for p in ("free", "limit")]
    assert boxes[0] is not None and boxes[1] is not None
    assert boxes[1]["y"] > boxes[0]["y"]  # panels stack on a narrow screen
    if os.environ.get("TOKENS_UPDATE_SCREENSHOTS"):
        await page.screenshot(path=str(DOCS / "billing-page-phone.png"), full_page=True)
    await context.close()


def test_a_missing_browser_is_installed_or_named_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "chromium"
    with pytest.raises(NoBrowser, match=r"sudo apt-get install -y chromium"):
        ensure_chromium(missing, may_install=False)
    assert ensure_chromium(CHROMIUM) == CHROMIUM  # there, or installed now


async def test_member_caps_and_the_forecast_fit_a_phone_without_javascript(
    live_api: LiveApi, browser: Any
) -> None:
    member = "a.very.long.member.name.of.the.sales.team@acme-industries.example"
    async with httpx.AsyncClient(base_url=live_api.base_url) as c:
        response = await c.put(
            f"/v1/teams/acme/members/{member}/cap",
            json={"tokens": 500},
            headers={"Authorization": f"Bearer {token('admin', sub='alice')}"},
        )
    assert response.status_code == 200, response.text
    context = await browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, java_script_enabled=False
    )
    page = await context.new_page()
    await page.goto(f"{live_api.base_url}/teams/acme/billing?token={token('member')}")
    cli = await cli_billing(live_api)
    [capped] = [m for m in cli["members"] if m["member"] == member]
    row = page.locator(f'#member-caps tr[data-member="{member}"] td')
    texts = [t.strip() for t in await row.all_inner_texts()]
    # On a phone the held column is hidden (.wide); its cell is still in the row.
    assert texts == [member, str(capped["spent"]), str(capped["held"]), "500", str(capped["left"])]
    assert await page.locator("#member-caps td.wide").first.is_hidden()
    if cli["forecast"] is None:  # the first day of the billing month
        assert await page.locator("#forecast-none").count() == 1
    else:
        cost = await _text(page, "#forecast-cost")
        assert cost == f"{cli['forecast']['projected_additional_cost']} USD"
    widths = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths  # the long member name wraps, nothing scrolls sideways
    await context.close()
