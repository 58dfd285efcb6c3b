"""Usage alerts (README "Usage alerts"): made once, in the charge's transaction; delivered once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest

from ledger.alerts import AlertRow
from ledger.catalog import DEFAULT_CATALOG
from ledger.errors import UnknownTeam
from ledger.service import Ledger
from runtime.config import Settings
from tests.cli_helpers import Cli
from tests.clock import at
from tests.factories import make_team
from tests.process import ROOT, Tokens, clean_env, team_set
from worker.alerts import AlertSender, backoff, deliver_alerts, sign
from worker.settings import worker_kwargs

T0 = at("2026-03-10T12:00:00")
MARCH = at("2026-03-01")


def levels(alerts: list[AlertRow]) -> list[tuple[str, int]]:
    """(kind, level) of alerts, oldest first."""
    return [(a.kind, a.level) for a in reversed(alerts)]


async def spend(
    ledger: Ledger, tokens: int, key: str, *, team_id: str = "acme", when: datetime = T0
) -> None:
    """Hold and capture `tokens` (enrich: 10 a lead) through group commit, as jobs do."""
    assert tokens % 10 == 0
    held = await ledger.hold(team_id, "enrich", tokens // 10, key=key, at=when)
    assert not held.refused, held
    assert held.charge_id is not None
    await ledger.capture(held.charge_id, at=when)


# -- made once, in the charge's transaction ------------------------------------


async def test_free_grant_alerts_at_80_and_100_percent_once(ledger: Ledger) -> None:
    await make_team(ledger, anchor=MARCH, at=T0)  # 250 free tokens, no additional
    await spend(ledger, 190, "a")  # 76 %
    assert await ledger.alerts("acme") == []
    await spend(ledger, 10, "b")  # 200 = 80 %
    alerts = await ledger.alerts("acme")
    assert levels(alerts) == [("free", 80)]
    assert (alerts[0].spent, alerts[0].granted_or_limit) == (200, 250)
    assert alerts[0].period_start == MARCH
    await spend(ledger, 40, "c")  # 240: still only the 80 % alert
    assert levels(await ledger.alerts("acme")) == [("free", 80)]
    await spend(ledger, 10, "d")  # 250 = 100 %
    alerts = await ledger.alerts("acme")
    assert levels(alerts) == [("free", 80), ("free", 100)]
    assert (alerts[0].spent, alerts[0].granted_or_limit) == (250, 250)
    # Newest first, each with its own public id.
    assert alerts[0].id > alerts[1].id and alerts[0].alert_id != alerts[1].alert_id


async def test_a_hold_counts_at_once_and_a_capture_or_release_makes_no_alert(
    ledger: Ledger,
) -> None:
    await make_team(ledger, anchor=MARCH, at=T0)
    held = await ledger.hold("acme", "ai_sequence", 4, key="gen", at=T0)  # 200 held = 80 %
    assert held.charge_id is not None
    assert levels(await ledger.alerts("acme")) == [("free", 80)]
    await ledger.release(held.charge_id, at=T0)  # usage back to 0; the alert stays
    assert levels(await ledger.alerts("acme")) == [("free", 80)]
    # Crossing 80 % again in the same month (a retried job after a release) makes none.
    await spend(ledger, 200, "gen-retry")
    alerts = await ledger.alerts("acme")
    assert levels(alerts) == [("free", 80)] and alerts[0].spent == 200


async def test_one_charge_jumping_past_both_levels_makes_both(ledger: Ledger) -> None:
    await make_team(ledger, anchor=MARCH, at=T0)
    held, settled = await ledger.charge("acme", "ai_sequence", 5, key="all", at=T0)  # 250
    assert not held.refused and settled is not None
    alerts = await ledger.alerts("acme")
    assert sorted(levels(alerts)) == [("free", 80), ("free", 100)]
    assert {a.spent for a in alerts} == {250}


async def test_refused_holds_make_no_alert(ledger: Ledger) -> None:
    await make_team(ledger, anchor=MARCH, at=T0)  # no additional tokens
    await spend(ledger, 150, "a")  # 60 %
    for n in range(3):
        refused = await ledger.hold("acme", "ai_sequence", 3, key=f"big{n}", at=T0)  # 150 > 100
        assert refused.refused
    held, _ = await ledger.charge("acme", "ai_sequence", 3, key="big-cli", at=T0)
    assert held.refused
    assert await ledger.alerts("acme") == []


async def test_replayed_keys_do_not_alert_twice(ledger: Ledger) -> None:
    await make_team(ledger, anchor=MARCH, at=T0)
    first, _ = await ledger.charge("acme", "ai_sequence", 4, key="job:1", at=T0)
    for _ in range(3):
        again, settled = await ledger.charge("acme", "ai_sequence", 4, key="job:1", at=T0)
        assert again.replayed and settled is None
        replay = await ledger.hold("acme", "ai_sequence", 4, key="job:1", at=T0)
        assert replay.replayed and replay.charge_id == first.charge_id
    alerts = await ledger.alerts("acme")
    assert levels(alerts) == [("free", 80)]


async def test_a_rolled_back_charge_takes_its_alert_with_it(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    await make_team(ledger, anchor=MARCH, at=T0)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        row = await conn.fetchrow(
            "SELECT * FROM tokens_hold('acme', 'k', 'ai_sequence', 5, 250, $1, NULL, NULL)", T0
        )
        assert row is not None and row["state"] == "held"
        inside = await conn.fetchval("SELECT count(*) FROM alerts")
        await tx.rollback()
    assert inside == 2  # made in the charge's own transaction...
    assert await ledger.alerts("acme") == []  # ...and gone with it


async def test_a_new_billing_month_alerts_again(ledger: Ledger) -> None:
    await make_team(ledger, anchor=MARCH, at=T0)
    await spend(ledger, 200, "mar", when=at("2026-03-31T23:59:59"))
    await spend(ledger, 200, "apr", when=at("2026-04-01T00:00:00"))
    alerts = await ledger.alerts("acme")
    assert levels(alerts) == [("free", 80), ("free", 80)]
    assert [a.period_start for a in reversed(alerts)] == [MARCH, at("2026-04-01")]


async def test_a_raised_grant_alerts_only_levels_not_yet_alerted(ledger: Ledger) -> None:
    await make_team(ledger, seats=1, anchor=MARCH, at=T0)  # 250
    await spend(ledger, 200, "a")  # 80 % of 250
    await make_team(ledger, seats=3, anchor=MARCH, at=T0)  # the month's grant becomes 750 at once
    await spend(ledger, 400, "b")  # 600 = 80 % of 750: already alerted this month
    assert levels(await ledger.alerts("acme")) == [("free", 80)]
    await make_team(ledger, seats=1, anchor=MARCH, at=T0)  # a grant never shrinks mid-month
    await spend(ledger, 150, "c")  # 750 = 100 % of 750
    alerts = await ledger.alerts("acme")
    assert levels(alerts) == [("free", 80), ("free", 100)]
    assert (alerts[0].spent, alerts[0].granted_or_limit) == (750, 750)
    assert (alerts[1].spent, alerts[1].granted_or_limit) == (200, 250)


async def test_additional_limit_alerts(ledger: Ledger) -> None:
    await make_team(ledger, limit=100, anchor=MARCH, at=T0)  # 250 free + 100 additional
    await spend(ledger, 250, "free")
    assert levels(await ledger.alerts("acme")) == [("free", 80), ("free", 100)]
    await spend(ledger, 70, "add-1")  # 70 %
    assert len(await ledger.alerts("acme")) == 2
    await spend(ledger, 10, "add-2")  # 80 %
    await spend(ledger, 20, "add-3")  # 100 %
    alerts = await ledger.alerts("acme")
    assert levels(alerts)[2:] == [("additional", 80), ("additional", 100)]
    assert [(a.spent, a.granted_or_limit) for a in alerts[:2]] == [(100, 100), (80, 100)]
    assert (await ledger.hold("acme", "enrich", 1, key="over", at=T0)).refused


async def test_a_charge_split_between_free_and_additional_alerts_both(ledger: Ledger) -> None:
    await make_team(ledger, limit=100, anchor=MARCH, at=T0)
    await spend(ledger, 190, "a")
    held = await ledger.hold("acme", "ai_sequence", 3, key="split", at=T0)  # 60 free + 90 add
    assert (held.free_tokens, held.additional_tokens) == (60, 90)
    assert sorted(levels(await ledger.alerts("acme"))) == [
        ("additional", 80),
        ("free", 80),
        ("free", 100),
    ]


async def test_no_additional_alerts_without_a_limit_or_on_a_trial(ledger: Ledger) -> None:
    await make_team(
        ledger, "trial", plan="trial", anchor=MARCH, at=T0
    )  # 100 free, once; never additional
    await spend(ledger, 100, "t", team_id="trial")
    assert levels(await ledger.alerts("trial")) == [("free", 80), ("free", 100)]
    await make_team(ledger, "zero", limit=0, anchor=MARCH, at=T0)
    await spend(ledger, 250, "z", team_id="zero")
    assert {a.kind for a in await ledger.alerts("zero")} == {"free"}


async def test_alerts_of_an_unknown_team_is_an_error(ledger: Ledger) -> None:
    with pytest.raises(UnknownTeam):
        await ledger.alerts("nobody")


async def test_200_concurrent_holds_alert_each_level_once(
    ledger: Ledger, database_url: str
) -> None:
    await make_team(
        ledger, "hot", seats=2, limit=230, anchor=MARCH, at=T0
    )  # 500 free + 230 additional: 73 holds fit
    pool = await asyncpg.create_pool(database_url, min_size=20, max_size=20)
    assert pool is not None
    try:
        racing = Ledger(pool, DEFAULT_CATALOG)  # group commit, as the worker runs
        results = await asyncio.gather(
            *(racing.hold("hot", "enrich", 1, key=f"job:{i}", at=T0) for i in range(200))
        )
        # Retried jobs: the same keys again, at the same moment.
        replays = await asyncio.gather(
            *(racing.hold("hot", "enrich", 1, key=f"job:{i}", at=T0) for i in range(200))
        )
    finally:
        await pool.close()
    assert sum(not r.refused for r in results) == 73
    assert all(r.replayed or r.refused for r in replays)
    assert racing.group.batches < 200  # holds really went through in shared batches
    alerts = await ledger.alerts("hot")
    assert sorted(levels(alerts)) == [
        ("additional", 80),
        ("additional", 100),
        ("free", 80),
        ("free", 100),
    ]
    for a in alerts:
        assert a.spent * 100 >= a.level * a.granted_or_limit
        assert a.spent <= a.granted_or_limit
        assert a.granted_or_limit == (500 if a.kind == "free" else 230)


# -- tokens alerts ----------------------------------------------------------------

ALERT_KEYS = {"alert_id", "team", "kind", "level", "period_start", "spent", "granted_or_limit"}
FORBIDDEN_AT_START = ("arq", "httpx", "stripe", "sqlalchemy", "sqlmodel", "worker")


def test_tokens_alerts_in_process(cli: Cli) -> None:
    cli.ok(*team_set("acme", at="2026-03-10T12:00:00Z"))
    assert cli.ok("alerts", "acme", "--json").json() == []
    assert "no usage alerts" in cli.ok("alerts", "acme").out
    cli.ok("charge", "acme", "ai_sequence", "--quantity", "4", "--at", "2026-03-10T12:00:00Z")
    human = cli.ok("alerts", "acme").out
    assert "80 % of the free tokens: 200 of 250 tokens" in human and "not delivered" in human
    assert len(cli.ok("alerts", "acme", "--json", "--at", "2026-03-01T00:00:00Z").json()) == 1
    assert cli.ok("alerts", "acme", "--json", "--at", "2026-02-28T23:59:59Z").json() == []
    assert cli("alerts", "acme", "--at", "yesterday").code == 1
    refused = cli("alerts", "nobody", "--json")
    assert refused.code == 1 and "unknown team" in refused.err and refused.out == ""


@pytest.mark.process
def test_tokens_alerts_json_in_a_fresh_process(database_url: str) -> None:
    tokens = Tokens(clean_env(TOKENS_DATABASE_URL=database_url))
    tokens.ok(*team_set("acme", at="2026-03-10T12:00:00Z"))
    when = ("--at", "2026-03-10T12:00:00Z")
    tokens.ok("charge", "acme", "ai_sequence", "--quantity", "4", "--key", "k1", *when)
    tokens.ok("charge", "acme", "ai_sequence", "--quantity", "4", "--key", "k1", *when)  # replay
    tokens.ok("charge", "acme", "ai_sequence", "--key", "k2", *when)
    out = tokens.ok("alerts", "acme", "--json").json()
    assert [(a["kind"], a["level"], a["spent"]) for a in out] == [
        ("free", 100, 250),
        ("free", 80, 200),
    ]
    for a in out:
        assert set(a) >= ALERT_KEYS
        assert (a["team"], a["granted_or_limit"]) == ("acme", 250)
        assert a["period_start"] == "2026-03-01T00:00:00Z"
        assert a["delivered_at"] is None
        uuid.UUID(a["alert_id"])
    tokens.refused("alerts", "nobody", "--json", says="unknown team")

    # The command's path imports none of the worker's or Stripe's libraries.
    probe = (
        "import json, sys\n"
        "from cli.main import main\n"
        "code = main(['alerts', 'acme', '--json'])\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & {set(FORBIDDEN_AT_START)!r})\n"
        "print(json.dumps({'code': code, 'bad': bad}), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=tokens.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"code": 0, "bad": []}
    assert len(json.loads(done.stdout)) == 2


# -- delivery to the webhook --------------------------------------------------------

SECRET = "app-secret-for-tests"


def readme_verifier() -> Callable[..., bool]:
    """The receiver's signature check, exactly as README.md gives it."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Usage alerts", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    verify: Callable[..., bool] = namespace["verify_tokens_signature"]
    return verify


@dataclass
class Received:
    alert_id: str
    body: bytes
    signature: str
    content_type: str
    status: int


class Receiver:
    """A real HTTP receiver in a thread, answering every POST with `status`.

    With `barrier`, each request waits there first (to prove two are in flight at once).
    """

    def __init__(self) -> None:
        self.status = 200
        self.received: list[Received] = []
        self.barrier: threading.Barrier | None = None
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/tokens"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.barrier is not None:
                    with contextlib.suppress(threading.BrokenBarrierError):
                        receiver.barrier.wait()
                status = receiver.status
                receiver.received.append(
                    Received(
                        json.loads(body)["alert_id"],
                        body,
                        self.headers.get("Tokens-Signature", ""),
                        self.headers.get("Content-Type", ""),
                        status,
                    )
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        # Same port on a restart (the server allows address reuse): the URL stays valid.
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def acknowledged(self) -> list[str]:
        return [r.alert_id for r in self.received if 200 <= r.status < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    if r._server is not None:
        r.stop()


async def four_alerts(ledger: Ledger) -> list[AlertRow]:
    await make_team(ledger, limit=100, anchor=MARCH, at=T0)
    await spend(ledger, 250, "free")
    await spend(ledger, 100, "additional")
    alerts = await ledger.alerts("acme")
    assert len(alerts) == 4
    return alerts


async def test_a_receiver_down_then_failing_then_back_gets_each_alert_once(
    ledger: Ledger, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    alerts = await four_alerts(ledger)
    ids = {a.alert_id for a in alerts}
    step = timedelta(seconds=10)  # the cron interval
    async with httpx.AsyncClient(timeout=5) as client:
        sender = AlertSender(pool, client, receiver.url, SECRET, 5.0, 300.0)

        # 1. Down (connection refused) for half an hour: nothing is lost, tries back off.
        receiver.stop()
        start = now = datetime.now(UTC)
        first = await sender.deliver_due(now)
        assert first.delivered == [] and len(first.failed) == 1  # a run stops at a failure
        row = await pool.fetchrow("SELECT * FROM alerts WHERE public_id = $1", first.failed[0])
        assert row is not None and row["attempts"] == 1 and row["delivered_at"] is None
        assert "ConnectError" in row["last_error"]
        assert row["next_attempt_at"] == now + timedelta(seconds=5)
        while now < start + timedelta(minutes=30):
            now += step
            assert (await sender.deliver_due(now)).delivered == []

        # 2. Up but answering 500 for another half hour.
        receiver.status = 500
        receiver.start()
        while now < start + timedelta(hours=1):
            now += step
            assert (await sender.deliver_due(now)).delivered == []
        rows = await pool.fetch("SELECT * FROM alerts")
        assert all(r["delivered_at"] is None and r["last_error"] == "HTTP 500" for r in rows)
        # Backoff: in an hour, about 16 tries an alert at most (5, 10, ... 300 s), not 360.
        assert all(5 <= r["attempts"] <= 17 for r in rows), [r["attempts"] for r in rows]
        assert all(r["next_attempt_at"] <= now + timedelta(seconds=300) for r in rows)
        assert receiver.acknowledged() == [] and {r.alert_id for r in receiver.received} == ids

        # 3. Back: everything arrives within the capped backoff, each alert acknowledged once.
        receiver.status = 200
        back = now
        while len(receiver.acknowledged()) < 4:
            assert now <= back + timedelta(seconds=310), (
                "not delivered after the receiver came back"
            )
            now += step
            await sender.deliver_due(now)
        for _ in range(30):  # later runs, up to days later, send nothing again
            now += timedelta(hours=2)
            assert (await sender.deliver_due(now)).delivered == []
    assert sorted(receiver.acknowledged()) == sorted(ids)
    rows = await pool.fetch("SELECT * FROM alerts")
    assert all(r["delivered_at"] is not None and r["last_error"] is None for r in rows)
    shown = {a.alert_id: a for a in await ledger.alerts("acme")}
    assert all(a.delivered_at is not None for a in shown.values())

    # Every request, failed or not, is signed; the README's check accepts them...
    verify = readme_verifier()
    for r in receiver.received:
        assert r.content_type == "application/json"
        assert verify(r.body, r.signature, SECRET)
        body = json.loads(r.body)
        assert set(body) == ALERT_KEYS
        a = shown[body["alert_id"]]
        assert (body["team"], body["kind"], body["level"]) == ("acme", a.kind, a.level)
        assert (body["spent"], body["granted_or_limit"]) == (a.spent, a.granted_or_limit)
        assert body["period_start"] == "2026-03-01T00:00:00Z"
    # ...and refuses a changed body, another secret, a garbled header or an old signature.
    r = receiver.received[-1]
    assert not verify(r.body.replace(b'"acme"', b'"evil"'), r.signature, SECRET)
    assert not verify(r.body, r.signature, "another-secret")
    assert not verify(r.body, "v1=abc", SECRET)
    old = sign(r.body, SECRET, int(datetime.now(UTC).timestamp()) - 3600)
    assert not verify(r.body, old, SECRET)


async def test_two_senders_at_once_never_send_the_same_alert(
    ledger: Ledger, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    await make_team(ledger, anchor=MARCH, at=T0)
    await spend(ledger, 250, "all")  # two alerts: free 80 and 100
    # Each request waits until a second one is in flight: both senders are mid-POST
    # at once, each holding its alert's row lock.
    receiver.barrier = threading.Barrier(2, timeout=20)
    async with httpx.AsyncClient(timeout=30) as a, httpx.AsyncClient(timeout=30) as b:
        now = datetime.now(UTC)
        first, second = await asyncio.gather(
            AlertSender(pool, a, receiver.url, SECRET).deliver_due(now),
            AlertSender(pool, b, receiver.url, SECRET).deliver_due(now),
        )
    assert not receiver.barrier.broken  # the two requests really overlapped
    assert len(first.delivered) == len(second.delivered) == 1
    assert first.delivered != second.delivered
    assert sorted(receiver.acknowledged()) == sorted(first.delivered + second.delivered)
    assert len(receiver.received) == 2


async def test_the_worker_cron_job_delivers_when_configured(
    ledger: Ledger, database_url: str, redis_url: str, receiver: Receiver
) -> None:
    alerts = await four_alerts(ledger)

    def ctx(**settings: Any) -> dict[str, Any]:
        base = Settings(database_url=database_url, redis_url=redis_url, **settings)
        return {"deps": {"settings": base, "ledger": ledger, "clock": lambda: T0}}

    assert await deliver_alerts(ctx()) == {"delivered": 0, "failed": 0, "error": None}
    unsigned = await deliver_alerts(ctx(alert_webhook_url=receiver.url))
    assert unsigned["delivered"] == 0 and "TOKENS_APP_SECRET" in unsigned["error"]
    assert receiver.received == []
    done = await deliver_alerts(ctx(alert_webhook_url=receiver.url, app_secret=SECRET))
    assert done == {"delivered": 4, "failed": 0, "error": None}
    assert sorted(receiver.acknowledged()) == sorted(a.alert_id for a in alerts)
    again = await deliver_alerts(ctx(alert_webhook_url=receiver.url, app_secret=SECRET))
    assert again["delivered"] == 0 and len(receiver.received) == 4

    kwargs = worker_kwargs(ctx()["deps"]["settings"], redis_url, burst=True)
    assert "deliver_alerts" in {c.name for c in kwargs["cron_jobs"]}


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n, 5, 300).total_seconds() for n in (1, 2, 3, 6, 7, 30)] == [
        5,
        10,
        20,
        160,
        300,
        300,
    ]
