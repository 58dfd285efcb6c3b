"""Whole processes: `tokens demo`, `tokens reconcile --json`, and a worker killed mid-job."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from cli.demo import month_of
from ledger.service import Ledger
from tests.cli_helpers import Cli
from tests.clock import at
from tests.factories import make_team
from tests.process import TOKENS_BIN

pytestmark = pytest.mark.process

TOKENS = [str(TOKENS_BIN)]  # the installed executable, as users run it
ROOT = Path(__file__).resolve().parents[2]


def env_for(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENS_", "STRIPE_"))}
    env |= {"TOKENS_DATABASE_URL": database_url, "TOKENS_REDIS_URL": redis_url, **extra}
    return env


def test_the_demo_month_is_the_calendar_month_of_its_start() -> None:
    assert month_of(at("2026-12-31T23:59:59")) == (at("2026-12-01"), at("2027-01-01"))
    assert month_of(at("2027-01-01T00:00:00")) == (at("2027-01-01"), at("2027-02-01"))
    assert month_of(at("2028-02-29T12:00:00")) == (at("2028-02-01"), at("2028-03-01"))


async def test_demo_reports_what_the_ledger_holds(
    database_url: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    before = datetime.now(UTC)
    proc = await asyncio.to_thread(
        subprocess.run,
        [*TOKENS, "demo", "--json"],
        env=env_for(database_url, redis_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    after = datetime.now(UTC)
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["outcomes"]["refused"] >= 1 and out["outcomes"]["failed"] >= 1
    # The demo spends in the current month, so the billing page shows it: its
    # month is the one that held the clock at some moment while it ran.
    for section in out["billing"]:
        start = at(section["period_start"].removesuffix("Z"))
        end = at(section["period_end"].removesuffix("Z"))
        assert start <= after and end > before, section
        assert section["free_spent"] > 0, section
    for section in out["billing"]:
        row = await pool.fetchrow(
            "SELECT * FROM billing_months WHERE team_id = $1 AND period_start = $2",
            section["team"],
            at(section["period_start"].removesuffix("Z")),
        )
        assert row is not None
        for key in ("free_granted", "free_spent", "additional_spent", "additional_billed"):
            assert section[key] == row[key], key
    reasons = {(b["team"].split("-")[0], b["reason"]) for b in out["bills"]}
    # The threshold reconcile races the monthly team's last captures: what it
    # did not catch is billed at the month's end, by a second bill.
    assert {("monthly", "threshold"), ("yearly", "month_end")} <= reasons
    assert reasons <= {("monthly", "threshold"), ("monthly", "month_end"), ("yearly", "month_end")}
    billed = await pool.fetchval("SELECT coalesce(sum(tokens), 0) FROM bills")
    assert billed == sum(b["tokens"] for b in out["bills"])
    assert all(b["status"] == "unsent" for b in out["bills"])  # no Stripe key here


def test_reconcile_json_contract(cli: Cli) -> None:
    cli.ok(
        "team",
        "set",
        "acme",
        "--plan",
        "email_outreach",
        "--seats",
        "1",
        "--interval",
        "year",
        "--anchor",
        "2026-01-01T00:00:00Z",
        "--at",
        "2026-01-01T00:00:00Z",
    )
    cli.ok(
        "team",
        "limit",
        "acme",
        "9000",
        "--actor",
        "ann",
        "--role",
        "admin",
        "--at",
        "2026-01-01T00:00:00Z",
    )
    cli.ok("charge", "acme", "debounce", "--quantity", "400", "--at", "2026-01-05T00:00:00Z")
    nothing = cli.ok("reconcile", "--json", "--at", "2026-01-06T00:00:00Z").json()
    assert nothing["bills_created"] == 0 and nothing["bills"] == []
    out = cli.ok("reconcile", "--team", "acme", "--json", "--at", "2026-02-01T00:00:00Z").json()
    assert (out["bills_created"], out["bills_sent"], out["bills_failed"]) == (1, 0, 0)
    [bill] = out["bills"]
    assert {k: bill[k] for k in ("team", "reason", "tokens", "amount_cents", "status")} == {
        "team": "acme",
        "reason": "month_end",
        "tokens": 150,
        "amount_cents": 150,
        "status": "unsent",
    }
    assert bill["stripe_invoice_id"] is None


def test_reconcile_exits_non_zero_when_stripe_refuses(
    cli: Cli, monkeypatch: Any, stripe_fake: Any
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", stripe_fake.api_key)
    monkeypatch.setenv("TOKENS_STRIPE_API_BASE", stripe_fake.base)
    monkeypatch.setenv("TOKENS_STRIPE_MAX_NETWORK_RETRIES", "0")
    cli.ok(
        "team",
        "set",
        "acme",
        "--plan",
        "email_outreach",
        "--seats",
        "1",
        "--interval",
        "month",
        "--anchor",
        "2026-01-01T00:00:00Z",
        "--stripe-customer",
        "cus_nobody",
        "--at",
        "2026-01-01T00:00:00Z",
    )
    cli.ok(
        "team",
        "limit",
        "acme",
        "9000",
        "--actor",
        "ann",
        "--role",
        "admin",
        "--at",
        "2026-01-01T00:00:00Z",
    )
    cli.ok("charge", "acme", "debounce", "--quantity", "5300", "--at", "2026-01-05T00:00:00Z")
    result = cli("reconcile", "--json", "--at", "2026-01-05T01:00:00Z")
    assert result.code == 1
    assert result.json()["bills_failed"] == 1
    assert "could not be sent" in result.err.strip().splitlines()[-1]


async def test_worker_killed_mid_job_charges_once(
    ledger: Ledger, database_url: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    await make_team(ledger)
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))
    await redis.flushdb()
    env = env_for(
        database_url,
        redis_url,
        TOKENS_SANDBOX_LATENCY_MS="4000",
        TOKENS_JOB_TIMEOUT_SECONDS="2",
        TOKENS_PROVIDER_TIMEOUT_SECONDS="1",
        TOKENS_LOG_LEVEL="WARNING",
    )
    try:
        enq = subprocess.run(
            [
                *TOKENS,
                "enqueue",
                "acme",
                "enrich",
                "--job-id",
                "kill",
                "--payload",
                '{"leads": [{"id": "l1", "email": "a@b.io"}]}',
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert enq.returncode == 0, enq.stderr
        first = subprocess.Popen(
            [*TOKENS, "worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while await pool.fetchval("SELECT count(*) FROM charges WHERE state = 'held'") == 0:
            assert time.monotonic() < deadline, "the worker never held the tokens"
            await asyncio.sleep(0.05)  # polling the ledger, bounded by the deadline
        first.send_signal(signal.SIGKILL)  # mid-search: the hold is in Postgres
        first.wait(10)
        env["TOKENS_SANDBOX_LATENCY_MS"] = "0"
        second = subprocess.run(
            [*TOKENS, "worker", "--burst"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 0, second.stderr
    finally:
        await redis.aclose()
    rows = await pool.fetch("SELECT idempotency_key, state, tokens FROM charges")
    assert [tuple(r) for r in rows] == [("acme~kill:l1:l1", "captured", 10)]


async def test_sigterm_lets_the_running_search_finish(
    ledger: Ledger, database_url: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    await make_team(ledger)
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))
    await redis.flushdb()
    env = env_for(
        database_url, redis_url, TOKENS_SANDBOX_LATENCY_MS="1500", TOKENS_LOG_LEVEL="WARNING"
    )
    try:
        jobs = await redis.enqueue_job(
            "debounce",
            "acme",
            {"id": "l1", "email": "a@b.io"},
            _job_id="term",
            _queue_name="tokens:queue",
        )
        assert jobs is not None
        worker = subprocess.Popen(
            [*TOKENS, "worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while await pool.fetchval("SELECT count(*) FROM charges WHERE state = 'held'") == 0:
            assert time.monotonic() < deadline, "the worker never held the tokens"
            await asyncio.sleep(0.05)  # polling the ledger, bounded by the deadline
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        await redis.aclose()
    rows = await pool.fetch("SELECT state FROM charges")
    assert [r["state"] for r in rows] == ["captured"]  # finished, not abandoned
