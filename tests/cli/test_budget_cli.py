"""Budget control on the command line: `tokens quote`, `tokens team member-cap`,
`--member` on charge and enqueue, and billing's members and forecast; in-process and
as a fresh `tokens` process."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from arq.connections import RedisSettings, create_pool
from arq.jobs import Job, JobDef

from tests.cli_helpers import Cli
from tests.factories import make_team
from tests.process import Tokens, argv, assert_one_line_error, clean_env
from worker.queue import QUEUE

# anchor 2026-01-01: the billing month of these clocks is 2026-03-01 -> 2026-04-01.
AT = "2026-03-11T00:00:00Z"  # ten days of the month gone
EARLY = "2026-03-01T12:00:00Z"  # half a day gone: too little for a pace


def leads(n: int) -> str:
    return json.dumps({"leads": [{"id": f"l{i}", "email": f"p{i}@acme.io"} for i in range(n)]})


def member_cap(team: str, member: str, tokens: int | str | None, **opts: Any) -> list[str]:
    opts = {"actor": "ann", "role": "admin", "at": AT} | opts
    words: list[str | int] = ["team", "member-cap", team, member]
    if tokens is not None:
        words.append(tokens)
    return argv(*words, **opts)


def test_quote_prices_a_lead_list_and_holds_nothing(cli: Cli) -> None:
    make_team(cli, "acme", limit=30)  # 250 free + 30 additional: 28 leads of 10
    out = cli.ok("quote", "acme", "enrich", "--payload", leads(30), "--at", AT, "--json").json()
    assert {k: out[k] for k in out if k not in ("period_start", "period_end")} == {
        "team": "acme",
        "action": "enrich",
        "member": None,
        "tokens": 300,
        "free_tokens": 250,
        "additional_tokens": 50,
        "cost": "0.50",
        "currency": "usd",
        "leads": 30,
        "leads_that_fit": 28,
        "fits": False,
    }
    assert (out["period_start"], out["period_end"]) == (
        "2026-03-01T00:00:00Z",
        "2026-04-01T00:00:00Z",
    )
    section = cli.ok("billing", "acme", "--at", AT, "--json").json()
    assert (section["held"], section["free_available"], section["history"]) == (0, 250, [])

    ai = cli.ok("quote", "acme", "ai_sequence", "--quantity", "2", "--at", AT, "--json").json()
    assert (ai["tokens"], ai["free_tokens"], ai["leads"], ai["leads_that_fit"], ai["fits"]) == (
        100,
        100,
        None,
        None,
        True,
    )
    human = cli.ok("quote", "acme", "enrich", "--payload", leads(30), "--at", AT).out
    assert "300 tokens" in human and "28 of 30 leads" in human


def test_quote_applies_the_members_cap(cli: Cli) -> None:
    make_team(cli, "acme", seats=2, limit=1000)
    cli.ok(*member_cap("acme", "bob", 95))
    bob = argv("quote", "acme", "enrich", payload=leads(30), member="bob", at=AT, json=True)
    out = cli.ok(*bob).json()
    assert (out["member"], out["leads_that_fit"], out["fits"]) == ("bob", 9, False)
    eve = cli.ok(*argv("quote", "acme", "enrich", payload=leads(30), member="eve", at=AT,
                       json=True)).json()  # fmt: skip
    assert (eve["leads_that_fit"], eve["fits"]) == (30, True)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["quote", "acme", "enrich", "--quantity", "2"], "--quantity cannot be combined"),
        (["quote", "acme", "enrich"], "needs a payload"),
        (["quote", "acme", "enrich", "--payload", "{"], "--payload is not valid JSON"),
        (["quote", "acme", "nope"], "unknown action"),
        (["quote", "nobody", "ai_sequence"], "unknown team"),
        (["quote", "acme", "ai_sequence", "--quantity", "0"], "quantity must be positive"),
        (["quote", "acme", "ai_sequence", "--member", " "], "member cannot be empty"),
    ],
)
def test_a_bad_quote_is_one_line(cli: Cli, args: list[str], says: str) -> None:
    make_team(cli, "acme")
    refused = cli(*args, "--at", AT)
    assert refused.code == 1, refused.err
    assert_one_line_error(refused.err)
    assert says in refused.err


def test_member_cap_by_an_admin_is_recorded_and_shown(cli: Cli) -> None:
    make_team(cli, "acme", limit=100)
    set_cap = cli.ok(*member_cap("acme", "bob", 30, json=True)).json()
    assert set_cap | {"changed_at": None} == {
        "team": "acme",
        "member": "bob",
        "actor": "ann",
        "role": "admin",
        "old_cap": None,
        "new_cap": 30,
        "changed_at": None,
    }
    cli.ok("charge", "acme", "enrich", "--quantity", "2", "--member", "bob", "--at", AT)
    section = cli.ok("billing", "acme", "--at", AT, "--json").json()
    assert section["members"] == [{"member": "bob", "spent": 20, "cap": 30, "held": 0, "left": 10}]
    human = cli.ok("billing", "acme", "--at", AT).out
    assert "Members with a monthly cap" in human and "bob" in human

    # Over the cap: refused whole with its own code, one line, nothing taken.
    over = cli("charge", "acme", "enrich", "--quantity", "2", "--member", "bob", "--at", AT)
    assert over.code == 1
    assert_one_line_error(over.err)
    assert "'bob'" in over.err and "monthly cap" in over.err
    # The team's room is the other refusal, with its own message.
    broke = cli("charge", "acme", "ai_sequence", "--quantity", "9", "--member", "eve", "--at", AT)
    assert broke.code == 1 and "not enough tokens" in broke.err
    assert cli.ok("history", "acme", "--json").json()[0]["tokens"] == 20

    removed = cli.ok(*member_cap("acme", "bob", None, none=True, json=True)).json()
    assert (removed["old_cap"], removed["new_cap"]) == (30, None)
    assert cli.ok("billing", "acme", "--at", AT, "--json").json()["members"] == []
    cli.ok("charge", "acme", "enrich", "--quantity", "2", "--member", "bob", "--at", AT)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (member_cap("acme", "bob", 10, role="member"), 1, "may change a member's monthly cap"),
        (member_cap("acme", "bob", 10, none=True), 1, "not both"),
        (member_cap("acme", "bob", None), 1, "--none to remove"),
        (member_cap("acme", "bob", -1), 1, "cap cannot be negative"),
        (member_cap("acme", "bob", "ten"), 1, "cap"),
        (member_cap("acme", "bob", 10, role="owner"), 1, "role must be admin or member"),
        (member_cap("nobody", "bob", 10), 1, "unknown team"),
        (member_cap("acme", "bob", 10, actor=None), 2, "--actor"),
    ],
)
def test_a_refused_member_cap_is_one_line_and_changes_nothing(
    cli: Cli, args: list[str], code: int, says: str
) -> None:
    make_team(cli, "acme")
    refused = cli(*args)
    assert refused.code == code, refused.err
    assert_one_line_error(refused.err)
    assert says in refused.err
    assert cli.ok("billing", "acme", "--at", AT, "--json").json()["members"] == []


def test_billing_forecasts_the_month_at_its_pace(cli: Cli) -> None:
    make_team(cli, "acme", limit=1000)  # 250 free + 1,000 additional; March has 31 days
    early = cli.ok("billing", "acme", "--at", EARLY, "--json").json()
    assert early["forecast"] is None
    assert "not enough history" in cli.ok("billing", "acme", "--at", EARLY).out
    cli.ok("charge", "acme", "ai_sequence", "--quantity", "5", "--at", "2026-03-02T00:00:00Z")
    # 250 tokens in 10 days: 25 a day; the free 250 are gone on day 10, the 1,250 would
    # take 50 days; 31 days at that pace use 775 tokens: 525 additional, USD 5.25.
    section = cli.ok("billing", "acme", "--at", AT, "--json").json()
    assert section["forecast"] == {
        "free_runs_out": "2026-03-11",
        "additional_runs_out": None,
        "projected_additional_cost": "5.25",
    }
    human = cli.ok("billing", "acme", "--at", AT).out
    assert "free tokens run out on 2026-03-11" in human and "5.25 USD" in human


def test_enqueue_with_member_carries_it_to_each_job(
    cli: Cli, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_team(cli, "acme")
    monkeypatch.setenv("TOKENS_REDIS_URL", redis_url)
    asyncio.run(_flush(redis_url))
    enqueue = argv("enqueue", "acme", "enrich", payload=leads(2), job_id="m1", member="bob")
    jobs = cli.ok(*enqueue, "--json").json()["jobs"]  # ids are per team: take the ones given
    [job_id] = [j["job_id"] for j in jobs if j["lead_id"] == "l1"]
    info = asyncio.run(_job(job_id, redis_url))
    assert info is not None and info.kwargs == {"member": "bob"}
    assert info.args == ("acme", {"id": "l1", "email": "p1@acme.io"})
    bad = cli(*argv("enqueue", "acme", "enrich", payload=leads(1), member="a\nb"))
    assert bad.code == 1 and "member must be" in bad.err


async def _flush(redis_url: str) -> None:
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    await redis.flushdb()
    await redis.aclose()


async def _job(job_id: str, redis_url: str) -> JobDef | None:
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        return await Job(job_id, redis, _queue_name=QUEUE).info()
    finally:
        await redis.aclose()


# -- as users run it: a fresh process per command ---------------------------------


@pytest.fixture
def tokens(database_url: str, redis_url: str) -> Tokens:
    return Tokens(clean_env(TOKENS_DATABASE_URL=database_url, TOKENS_REDIS_URL=redis_url))


@pytest.mark.process
def test_budget_commands_as_processes(tokens: Tokens) -> None:
    make_team(tokens, "acme", limit=1000)
    cap = tokens.ok(*member_cap("acme", "bob", 40, json=True)).json()
    assert (cap["member"], cap["new_cap"]) == ("bob", 40)
    tokens.ok(
        *argv("charge", "acme", "enrich", quantity=3, member="bob", at="2026-03-02T00:00:00Z")
    )
    quoted = tokens.ok(
        *argv("quote", "acme", "enrich", payload=leads(5), member="bob", at=AT, json=True)
    ).json()
    assert {k: quoted[k] for k in ("tokens", "leads", "leads_that_fit", "fits", "cost")} == {
        "tokens": 50,
        "leads": 5,
        "leads_that_fit": 1,
        "fits": False,
        "cost": "0.00",
    }
    section = tokens.ok("billing", "acme", "--at", AT, "--json").json()
    assert section["members"] == [{"member": "bob", "spent": 30, "cap": 40, "held": 0, "left": 10}]
    assert section["forecast"] == {
        "free_runs_out": None,
        "additional_runs_out": None,
        "projected_additional_cost": "0.00",
    }
    tokens.refused(
        *argv("charge", "acme", "enrich", quantity=2, member="bob", at=AT), says="monthly cap"
    )
    tokens.refused(*member_cap("acme", "bob", 5, role="member"), says="only a team admin")
    removed = tokens.ok(*member_cap("acme", "bob", None, none=True, json=True)).json()
    assert removed["new_cap"] is None
    assert tokens.ok("billing", "acme", "--at", AT, "--json").json()["members"] == []
