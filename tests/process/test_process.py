"""Every command of README "Command line" as users run it: the installed `tokens`, a fresh
process each time, on embedded servers (a data dir of its own) and on a
configured TOKENS_DATABASE_URL. `pytest -m process` runs this layer alone.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from tests.factories import make_team
from tests.process import Tokens, assert_one_line_error, clean_env, team_set

pytestmark = pytest.mark.process

BILLING_KEYS = {
    "team",
    "plan",
    "period_start",
    "period_end",
    "free_granted",
    "free_spent",
    "free_available",
    "additional_limit",
    "additional_spent",
    "additional_available",
    "additional_spent_usd",
    "additional_billed",
    "held",
}
CHARGE_KEYS = {"charge_id", "tokens", "free_tokens", "additional_tokens", "state"}
HISTORY_KEYS = {
    "charge_id",
    "time",
    "action",
    "quantity",
    "tokens",
    "free_tokens",
    "additional_tokens",
    "state",
    "job_id",
    "lead_id",
}
RECONCILE_KEYS = {"bills_created", "bills_sent", "bills_failed", "bills"}
BILL_KEYS = {"team", "reason", "tokens", "amount_cents", "status", "stripe_invoice_id"}


def new_data_dir() -> Path:
    # Not under a private home folder: the embedded Postgres runs as another user.
    path = Path(tempfile.mkdtemp(prefix="tokens-proc-", dir="/tmp"))
    path.chmod(0o755)
    return path / "data"


@pytest.fixture(scope="module")
def embedded() -> Iterator[Tokens]:
    """`tokens` on embedded defaults: its own data dir, no URL configured."""
    tokens = Tokens(clean_env(TOKENS_DATA_DIR=str(new_data_dir())), "embedded")
    yield tokens
    tokens("stop")


@pytest.fixture
def configured(database_url: str, redis_url: str) -> Tokens:
    """`tokens` on a configured (and migrated) Postgres and Redis."""
    env = clean_env(TOKENS_DATABASE_URL=database_url, TOKENS_REDIS_URL=redis_url)
    return Tokens(env, "configured")


@pytest.fixture(params=["embedded", "configured"])
def tokens(request: pytest.FixtureRequest) -> Tokens:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def team_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_migrate(tokens: Tokens) -> None:
    first = tokens.ok("migrate", "--json").json()
    assert set(first) == {"applied", "head"}
    again = tokens.ok("migrate", "--json").json()
    assert again == {"applied": [], "head": first["head"]}
    tokens.refused("migrate", "--bogus", code=2, says="no such option")


def test_the_issue_sequence_charges_and_reads(tokens: Tokens) -> None:
    """What crashed in every fresh process: team set, charge, billing, history."""
    team = team_name()
    made = tokens.ok(
        *team_set(team, seats=2, interval="year", anchor="2026-01-31T10:00:00Z"),
        "--at",
        "2026-03-05T00:00:00Z",
        "--json",
    ).json()
    assert (made["team"], made["created"], made["free_granted"]) == (team, True, 500)

    charged = tokens.ok("charge", team, "ai_sequence", "--json", "--at", "2026-03-05T01:00:00Z")
    c = charged.json()
    assert set(c) >= CHARGE_KEYS
    assert (c["tokens"], c["free_tokens"], c["additional_tokens"], c["state"]) == (
        50,
        50,
        0,
        "captured",
    )

    section = tokens.ok("billing", team, "--json", "--at", "2026-03-05T02:00:00Z").json()
    assert set(section) >= BILLING_KEYS
    assert (section["period_start"], section["period_end"]) == (
        "2026-02-28T10:00:00Z",
        "2026-03-31T10:00:00Z",
    )
    assert (section["free_granted"], section["free_spent"], section["free_available"]) == (
        500,
        50,
        450,
    )
    assert section["additional_spent_usd"] == "0.00" and section["held"] == 0
    assert [h["charge_id"] for h in section["history"]] == [c["charge_id"]]

    history = tokens.ok("history", team, "--json").json()
    assert [h["charge_id"] for h in history] == [c["charge_id"]]
    assert set(history[0]) >= HISTORY_KEYS
    rows = list(csv.DictReader(io.StringIO(tokens.ok("history", team, "--csv").out)))
    assert [r["action"] for r in rows] == ["ai_sequence"]
    assert set(rows[0]) >= HISTORY_KEYS

    # Human output works in a fresh process too (rich is imported only there).
    human = tokens.ok("billing", team, "--at", "2026-03-05T02:00:00Z").out
    assert "Free tokens" in human and "450" in human


def test_same_key_replays_in_a_new_process(tokens: Tokens) -> None:
    team = team_name()
    make_team(tokens, team)
    args = ("charge", team, "enrich", "--key", "k-1", "--json", "--at", "2026-01-02T00:00:00Z")
    first, again = tokens.ok(*args).json(), tokens.ok(*args).json()
    assert again["charge_id"] == first["charge_id"] and again["replayed"] is True
    tokens.refused(
        "charge", team, "debounce", "--key", "k-1", "--at", "2026-01-02T00:00:00Z", says="key"
    )
    section = tokens.ok("billing", team, "--json", "--at", "2026-01-02T00:00:00Z").json()
    assert section["free_spent"] == 10


ANCHOR = "--interval month --anchor 2026-01-01T00:00:00Z"
# (command line, exit code, what the one line on stderr says); {team} is a trial team.
REFUSALS = [
    (f"team set {{team}} --plan gold --seats 1 {ANCHOR}", 1, "unknown plan"),
    (f"team set {{team}} --plan trial --seats -1 {ANCHOR}", 1, "seats"),
    (f"team set {{team}}/../x --plan trial --seats 1 {ANCHOR}", 1, "'..' between slashes"),
    ("team set {team} --plan trial --seats 1 --interval week --anchor 2026-01-01", 1, "interval"),
    ("team set {team} --plan trial --seats 1 --interval month --anchor yesterday", 1, "--anchor"),
    ("team limit {team} 100 --actor bob --role member", 1, "admin"),
    ("team limit {team} 100 --actor ann --role admin", 1, "trial"),
    ("team limit {team} -5 --actor ann --role admin", 1, "limit"),
    ("team limit {team} 1.5 --actor ann --role admin", 1, "limit"),
    ("charge {team} enrich --quantity 0", 1, "quantity"),
    ("charge {team} teleport", 1, "unknown action"),
    ("charge nobody-{team} enrich", 1, "unknown team"),
    ("charge {team} ai_sequence --quantity 3", 1, "not enough tokens"),
    ("charge {team} enrich --at soon", 1, "--at"),
    ("charge {team} enrich --at 9999-12-31T00:00:00Z", 1, "out of range"),
    ("billing {team} --at 0001-01-01T00:00:00Z", 1, "out of range"),
    ("team limit {team} 10 --actor ann --role admin --at 9999-12-31T00:00:00Z", 1, "out of range"),
    (
        "team set {team} --plan trial --seats 1 --interval month "
        "--anchor 0001-01-01T00:00:00+05:00",
        1,
        "out of range",
    ),
    ("billing nobody-{team} --json", 1, "unknown team"),
    ("history nobody-{team} --json", 1, "unknown team"),
    ("enqueue {team} enrich --payload '{{nope'", 1, "--payload"),
    ("enqueue {team} teleport", 1, "unknown action"),
    (
        """enqueue {team} enrich --quantity 2 --payload '{{"leads": [{{"id": "x"}}]}}'""",
        1,
        "quantity",
    ),
    ("reconcile --at not-a-time", 1, "--at"),
    ("bills --status bogus", 1, "unknown bill status"),
    ("bill show 999999", 1, "unknown bill"),
    ("bill show abc", 1, "bill id"),
    ("bill show 99999999999999999999", 1, "too large to be a bill id"),
    ("bill reissue 9223372036854775808", 1, "too large to be a bill id"),
    ("bill reissue 999999", 1, "unknown bill"),
    ("alerts nobody-{team}", 1, "unknown team"),
    ("charge {team}", 2, "missing argument"),
]


def test_refusals_change_nothing(tokens: Tokens) -> None:
    team = team_name()
    make_team(tokens, team, plan="trial")
    before = tokens.ok("billing", team, "--json", "--at", "2026-01-01T00:00:00Z").json()
    for line, code, says in REFUSALS:
        tokens.refused(*shlex.split(line.format(team=team)), code=code, says=says)
    after = tokens.ok("billing", team, "--json", "--at", "2026-01-01T00:00:00Z").json()
    assert after == before
    assert tokens.ok("history", team, "--json").json() == []


def test_limit_by_admin_is_recorded(tokens: Tokens) -> None:
    team = team_name()
    make_team(tokens, team)
    out = tokens.ok(
        "team",
        "limit",
        team,
        "2000",
        "--actor",
        "ann@acme.io",
        "--role",
        "admin",
        "--json",
        "--at",
        "2026-01-02T00:00:00Z",
    ).json()
    assert (out["old_limit"], out["new_limit"], out["actor"]) == (0, 2000, "ann@acme.io")
    section = tokens.ok("billing", team, "--json", "--at", "2026-01-02T00:00:00Z").json()
    assert (section["additional_limit"], section["additional_available"]) == (2000, 2000)


async def test_enqueue_then_worker_burst_charges_each_lead(tokens: Tokens, redis_url: str) -> None:
    if tokens.name == "configured":  # the shared test Redis may hold other tests' jobs
        redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))
        await redis.flushdb()
        await redis.aclose()
    team = team_name()
    make_team(tokens, team)
    leads = ",".join(f'{{"id": "lead-{i}", "email": "p{i}@acme.io"}}' for i in range(3))
    queued = tokens.ok(
        "enqueue", team, "debounce", "--payload", f'{{"leads": [{leads}]}}', "--json"
    ).json()
    assert [j["lead_id"] for j in queued["jobs"]] == ["lead-0", "lead-1", "lead-2"]
    tokens.ok("worker", "--burst", timeout=120)
    history = tokens.ok("history", team, "--json").json()
    assert sorted(h["lead_id"] for h in history) == ["lead-0", "lead-1", "lead-2"]
    assert {h["state"] for h in history} == {"captured"}


def test_worker_refuses_a_bad_configuration(tokens: Tokens) -> None:
    bad = tokens.with_env(TOKENS_HOLD_TTL_SECONDS="10")
    bad.refused("worker", "--burst", code=2, says="TOKENS_HOLD_TTL_SECONDS")


def test_reconcile_bills_the_month_end(tokens: Tokens) -> None:
    team = team_name()
    make_team(tokens, team, limit=1000)
    tokens.ok("charge", team, "debounce", "--quantity", "300", "--at", "2026-01-05T00:00:00Z")
    out = tokens.ok("reconcile", "--team", team, "--json", "--at", "2026-02-01T00:00:00Z").json()
    assert set(out) >= RECONCILE_KEYS
    [bill] = out["bills"]
    assert set(bill) >= BILL_KEYS
    assert (bill["reason"], bill["tokens"], bill["amount_cents"], bill["status"]) == (
        "month_end",
        50,
        50,
        "unsent",
    )
    again = tokens.ok("reconcile", "--team", team, "--json", "--at", "2026-02-01T00:00:00Z")
    assert again.json()["bills_created"] == 0

    # Finance's view of the same bill, each command a fresh process.
    listed = tokens.ok("bills", "--team", team, "--json").json()
    assert [(b["bill_id"], b["tokens"], b["status"]) for b in listed] == [
        (bill["bill_id"], 50, "unsent")
    ]
    assert set(listed[0]) >= {"bill_id", "team", "reason", "tokens", "amount_cents", "status"}
    shown = tokens.ok("bill", "show", str(bill["bill_id"]), "--json").json()
    assert shown["by_action"] == {"debounce": 50}
    assert sum(c["additional_tokens"] for c in shown["charges"]) == 50
    rows = list(
        csv.DictReader(io.StringIO(tokens.ok("bill", "show", str(bill["bill_id"]), "--csv").out))
    )
    assert sum(int(r["additional_tokens"]) for r in rows) == 50
    # An unsent bill (no Stripe key here) is not reissued: nothing was sent.
    tokens.refused("bill", "reissue", str(bill["bill_id"]))


def test_alerts_as_a_process(tokens: Tokens) -> None:
    team = team_name()
    make_team(tokens, team)  # 250 free tokens
    tokens.ok("charge", team, "ai_sequence", "--quantity", "4", "--at", "2026-01-02T00:00:00Z")
    alerts = tokens.ok("alerts", team, "--json").json()
    assert [(a["kind"], a["level"], a["spent"]) for a in alerts] == [("free", 80, 200)]
    assert set(alerts[0]) >= {"alert_id", "team", "kind", "level", "period_start", "spent"}


def test_sixteen_processes_on_room_for_ten(tokens: Tokens) -> None:
    """Trial: 100 tokens once; an icebreaker costs 10. Exactly 10 of 16 succeed."""
    team = team_name()
    make_team(tokens, team, plan="trial")
    procs = [
        tokens.popen("charge", team, "ai_icebreaker", "--json", "--at", "2026-01-02T00:00:00Z")
        for _ in range(16)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    won = [json.loads(out) for code, out, _ in results if code == 0]
    lost = [err for code, _, err in results if code != 0]
    assert len(won) == 10 and len(lost) == 6
    for code, _, err in results:
        assert code in (0, 1) and "Traceback" not in err
    for err in lost:
        assert_one_line_error(err)
        assert "not enough tokens" in err
    section = tokens.ok("billing", team, "--json", "--at", "2026-01-02T00:00:00Z").json()
    assert (section["free_spent"], section["free_available"]) == (100, 0)
    assert sorted(h["charge_id"] for h in section["history"]) == sorted(w["charge_id"] for w in won)


def test_demo_on_embedded_defaults() -> None:
    tokens = Tokens(clean_env(TOKENS_DATA_DIR=str(new_data_dir())), "demo")
    try:
        out = tokens.ok("demo", "--json", timeout=180).json()
        assert out["outcomes"]["captured"] > 0 and out["outcomes"]["refused"] >= 1
        assert {b["reason"] for b in out["bills"]} == {"threshold", "month_end"}
    finally:
        tokens("stop")


def test_demo_reset_refuses_a_configured_database(configured: Tokens) -> None:
    configured.refused("demo", "--reset", says="--reset")


def test_stop_keeps_the_data_and_the_next_command_restarts() -> None:
    tokens = Tokens(clean_env(TOKENS_DATA_DIR=str(new_data_dir())), "stop")
    try:
        team = team_name()
        make_team(tokens, team)
        tokens.ok("charge", team, "enrich", "--at", "2026-01-02T00:00:00Z")
        status = tokens.ok("servers", "--json").json()
        assert status["postgres"]["running"] is True
        assert "postgres" in tokens.ok("stop", "--json").json()["stopped"]
        assert tokens.ok("servers", "--json").json()["postgres"]["running"] is False
        section = tokens.ok("billing", team, "--json", "--at", "2026-01-02T00:00:00Z").json()
        assert section["free_spent"] == 10
        tokens.refused("stop", "--bogus", code=2, says="no such option")
    finally:
        tokens("stop")


def test_an_unreachable_database_is_one_line() -> None:
    url = "postgresql://tokens@127.0.0.1:9/tokens"  # port 9 (discard): nothing listens
    tokens = Tokens(clean_env(TOKENS_DATABASE_URL=url), "unreachable")
    proc = tokens.refused("billing", "acme", "--json", code=3, says="postgres")
    assert "127.0.0.1:9" in proc.err
