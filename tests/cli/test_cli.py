"""The command-line contract (README "Command line"), and every bad input."""

from __future__ import annotations

import csv
import io

import asyncpg
import pytest

from ledger import shapes
from ledger.service import Ledger
from tests.cli_helpers import Cli
from tests.clock import at
from tests.factories import make_team
from tests.process import argv, team_limit, team_set

AT = "2026-02-28T10:00:00Z"
# The team of these tests: 2 seats (500 free tokens), anchored on Jan 31.
ACME = {"seats": 2, "anchor": "2026-01-31T00:00:00Z", "at": AT}


def test_migrate_is_idempotent(cli: Cli) -> None:
    assert cli.ok("migrate", "--json").json()["applied"] == []


def test_charge_and_billing_json_contract(cli: Cli) -> None:
    make_team(cli, "acme", **ACME, limit=1000)
    charge = argv("charge", "acme", "ai_sequence", quantity=11, key="k1", json=True)
    charged = cli.ok(*charge, "--at", AT).json()
    assert {k: charged[k] for k in ("tokens", "free_tokens", "additional_tokens", "state")} == {
        "tokens": 550,
        "free_tokens": 500,
        "additional_tokens": 50,
        "state": "captured",
    }
    assert isinstance(charged["charge_id"], int)
    again = cli.ok(*charge, "--at", "2026-03-05T00:00:00Z").json()
    assert again["charge_id"] == charged["charge_id"] and again["replayed"] is True

    billing = cli.ok("billing", "acme", "--at", "2026-03-01T00:00:00Z", "--json").json()
    assert billing["period_start"] == "2026-02-28T00:00:00Z"
    assert billing["period_end"] == "2026-03-31T00:00:00Z"
    assert billing["free_granted"] == 500 and billing["free_spent"] == 500
    assert billing["free_available"] == 0
    assert billing["additional_limit"] == 1000 and billing["additional_spent"] == 50
    assert billing["additional_available"] == 950
    assert billing["additional_spent_usd"] == "0.50"
    assert billing["additional_billed"] == 0 and billing["held"] == 0
    assert billing["team"] == "acme" and billing["plan"] == "email_outreach"
    assert [h["action"] for h in billing["history"]] == ["ai_sequence"]


def test_a_charge_that_reaches_the_threshold_makes_its_bill_at_once(cli: Cli) -> None:
    make_team(cli, "acme", **ACME, limit=10_000)
    under = cli.ok(*argv("charge", "acme", "ai_sequence", quantity=109, json=True), "--at", AT)
    assert under.json()["bills_created"] == []  # 500 free + 4,950 additional: USD 49.50
    over = cli.ok(*argv("charge", "acme", "enrich", quantity=5, json=True), "--at", AT).json()
    assert over["additional_tokens"] == 50 and len(over["bills_created"]) == 1
    [made] = over["bills_created"]
    assert (made["reason"], made["tokens"], made["amount_cents"]) == ("threshold", 5000, 5000)
    [listed] = cli.ok("bills", "--team", "acme", "--json").json()
    assert (listed["bill_id"], listed["tokens"], listed["status"]) == (
        made["bill_id"],
        5000,
        "sending",
    )
    text = cli.ok(*argv("charge", "acme", "enrich"), "--at", AT).out
    assert "bill" not in text  # no new bill: 10 tokens are not USD 50


def test_a_charge_whose_bill_cannot_be_made_still_succeeds(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The charge is committed before the bill is tried: failing the command then would
    # have a person charge again.
    import billing.reconcile

    async def broken(*_: object, **__: object) -> list[object]:
        raise ConnectionResetError("connection to Postgres lost")

    monkeypatch.setattr(billing.reconcile, "create_bills", broken)
    make_team(cli, "acme", **ACME, limit=10_000)
    over = cli.ok(*argv("charge", "acme", "ai_sequence", quantity=120, json=True), "--at", AT)
    assert over.json()["state"] == "captured" and over.json()["bills_created"] == []
    assert len(cli.ok("history", "acme", "--json").json()) == 1


def test_history_csv_has_a_header_row(cli: Cli) -> None:
    make_team(cli, "acme", **ACME)
    cli.ok("charge", "acme", "enrich", "--quantity", "3", "--at", AT)
    cli.ok("charge", "acme", "debounce", "--at", "2026-03-01T00:00:00Z")
    rows = list(csv.DictReader(io.StringIO(cli.ok("history", "acme", "--csv").out)))
    assert [(r["action"], r["tokens"], r["state"]) for r in rows] == [
        ("enrich", "30", "captured"),
        ("debounce", "1", "captured"),
    ]
    assert rows[0]["time"] == "2026-02-28T10:00:00Z"
    until = cli.ok("history", "acme", "--json", "--at", "2026-02-28T23:00:00Z").json()
    assert [r["action"] for r in until] == ["enrich"]


async def test_a_csv_cell_a_spreadsheet_would_run_is_quoted(ledger: Ledger) -> None:
    await make_team(ledger, anchor=AT)
    await ledger.hold(
        "acme", "enrich", 1, key="=cmd|' /C calc'!A0", at=at(AT), job_id="+1", lead_id="@x"
    )
    await ledger.hold("acme", "enrich", 1, key="-5", at=at(AT), job_id="-x", lead_id="\tl")
    rows = list(csv.DictReader(io.StringIO(shapes.history_csv(await ledger.history("acme")))))
    cells = [(r["key"], r["job_id"], r["lead_id"]) for r in rows]
    assert cells == [("'=cmd|' /C calc'!A0", "'+1", "'@x"), ("-5", "'-x", "'\tl")]
    assert rows[0]["tokens"] == "10" and rows[0]["settled_at"] == ""


BAD_INPUTS = [
    (["charge", "ghost", "debounce"], "unknown team 'ghost'"),
    (["charge", "acme", "translate"], "unknown action 'translate'"),
    (["charge", "acme", "debounce", "--quantity", "0"], "quantity must be positive"),
    (["charge", "acme", "debounce", "--quantity", "-3"], "quantity must be positive"),
    (["charge", "acme", "debounce", "--quantity", "two"], "--quantity must be a whole number"),
    (["charge", "acme", "debounce", "--at", "next tuesday"], "not an ISO 8601 timestamp"),
    (["charge", "acme", "ai_sequence", "--quantity", "20"], "not enough tokens"),
    (team_set("b", plan="gold", anchor=AT), "unknown plan 'gold'"),
    (team_set("b", plan="trial", seats=-1, anchor=AT), "seats cannot be negative"),
    (team_set("b", plan="trial", interval="week", anchor=AT), "interval must be month or year"),
    (team_set("b", plan="trial", anchor="31/01/2026"), "--anchor '31/01/2026' is not an ISO 8601"),
    (team_limit("acme", -5), "limit cannot be negative"),
    (team_limit("acme", "2.5"), "limit must be a whole number"),
    (team_limit("acme", 50, actor="bob", role="member"), "only a team admin may change"),
    (team_limit("acme", 50, actor="bob", role="owner"), "role must be admin or member"),
    (team_limit("ghost", 50), "unknown team 'ghost'"),
    (["billing", "ghost"], "unknown team 'ghost'"),
    (["history", "ghost"], "unknown team 'ghost'"),
    (["charge", "acme"], "Missing argument"),
    (team_limit("acme", "\uff17"), "limit must be a whole number"),  # a full-width 7
    (team_limit("acme", "1_000"), "limit must be a whole number"),
    (["charge", "acme", "debounce", "--at", "9999-12-31T00:00:00Z"], "out of range"),
    (team_set("b", plan="trial", anchor="0001-01-01T00:00:00Z"), "out of range"),
    (team_set("b/../c", plan="trial", anchor=AT), "'..' between slashes"),
    (["history", "acme", "--csv", "--json"], "--csv and --json cannot be combined"),
    (["bill", "show", "1", "--csv", "--json"], "--csv and --json cannot be combined"),
    (["bills", "--team", "ghost"], "unknown team 'ghost'"),
]


async def _snapshot(database_url: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(database_url)
    try:
        tables = ["teams", "billing_months", "charges", "limit_changes"]
        return [(t, await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables]
    finally:
        await conn.close()


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_non_zero_and_writes_nothing(
    cli: Cli, database_url: str, args: list[str], message: str
) -> None:
    import asyncio

    make_team(cli, "acme", **ACME)
    cli.ok("billing", "acme")  # the current month exists, so a refusal opens nothing
    before = asyncio.run(_snapshot(database_url))
    result = cli(*args)
    assert result.code != 0
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert message in lines[0]
    assert "Traceback" not in result.err
    assert asyncio.run(_snapshot(database_url)) == before


def test_trial_team_cannot_get_additional_tokens(cli: Cli, database_url: str) -> None:
    make_team(cli, "t", plan="trial", seats=3, anchor=AT)
    result = cli(*team_limit("t", 100, at=AT))
    assert result.code == 1 and "trial plan" in result.err
    assert cli.ok("billing", "t", "--at", AT, "--json").json()["additional_limit"] == 0


def test_bad_configuration_is_one_line(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENS_HOLD_TTL_SECONDS", "60")
    result = cli("billing", "acme")
    assert result.code == 2 and result.out == ""
    [line] = result.err.strip().splitlines()
    assert "bad configuration" in line and "TOKENS_HOLD_TTL_SECONDS (60)" in line
