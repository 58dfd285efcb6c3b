"""`tokens bills`, `tokens bill show`, `tokens bill reissue` as real processes (README
"Billing with Stripe")."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import asyncpg
import pytest

from billing.reconcile import create_bills
from ledger.service import Ledger
from testing.stripe import StripeFake
from tests.billing.test_reconcile import billed_team, run, sender_for, spend
from tests.clock import at
from tests.process.test_demo_and_crash import ROOT, TOKENS, env_for

pytestmark = pytest.mark.process

BILL_KEYS = {
    "bill_id",
    "team",
    "reason",
    "tokens",
    "amount_cents",
    "status",
    "stripe_invoice_id",
    "error_code",
    "created_at",
}


async def tokens(database_url: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [*TOKENS, *args],
        env=env_for(database_url, redis_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def refused(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("tokens: error: ") and text in proc.stderr


async def test_bills_show_and_reissue_as_processes(
    ledger: Ledger,
    pool: asyncpg.Pool,
    stripe_fake: StripeFake,
    database_url: str,
    redis_url: str,
) -> None:
    cus = await billed_team(ledger, stripe_fake)
    assert cus is not None
    await spend(ledger, "acme", 250 + 4000, "2026-01-20", "a")
    held, _ = await ledger.charge("acme", "enrich", 100, key="e", at=at("2026-01-21"))
    assert not held.refused
    stripe_fake.delete_customer(cus)
    report = await run(pool, sender_for(pool, stripe_fake), "2026-01-22")
    [bill] = report.bills
    assert bill.status == "failed" and bill.error_code == "customer_deleted"

    listed = await tokens(database_url, redis_url, "bills", "--json", "--status", "failed")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert set(row) >= BILL_KEYS
    assert (row["bill_id"], row["status"], row["tokens"]) == (1, "failed", 5000)
    assert row["error_code"] == "customer_deleted" and row["created_at"].startswith("2026-01-22")
    refused(await tokens(database_url, redis_url, "bills", "--status", "lost"), "lost")

    shown = await tokens(database_url, redis_url, "bill", "show", "1", "--json")
    assert shown.returncode == 0, shown.stderr
    out: dict[str, Any] = json.loads(shown.stdout)
    assert set(out) >= BILL_KEYS
    assert out["by_action"] == {"debounce": 4000, "enrich": 1000}
    assert sum(out["by_action"].values()) == out["tokens"] == 5000
    assert {c["action"] for c in out["charges"]} == {"debounce", "enrich"}
    for c in out["charges"]:
        assert {"charge_id", "action", "additional_tokens", "job_id", "lead_id"} <= set(c)
    as_csv = await tokens(database_url, redis_url, "bill", "show", "1", "--csv")
    assert as_csv.returncode == 0, as_csv.stderr
    header, *rows = as_csv.stdout.splitlines()
    assert "action" in header.split(",") and len(rows) == 2
    refused(await tokens(database_url, redis_url, "bill", "show", "99", "--json"), "unknown bill")

    again = await tokens(
        database_url, redis_url, "bill", "reissue", "1", "--json", "--at", "2026-01-23T00:00:00Z"
    )
    assert again.returncode == 0, again.stderr
    new = json.loads(again.stdout)
    assert (new["bill_id"], new["reissue_of"], new["tokens"], new["status"]) == (
        2,
        1,
        5000,
        "sending",
    )
    old = await pool.fetchval("SELECT status FROM bills WHERE id = 1")
    assert old == "reissued"
    # The new bill is sending (not void or failed): it cannot be reissued.
    refused(await tokens(database_url, redis_url, "bill", "reissue", "2"), "can be reissued")
    refused(await tokens(database_url, redis_url, "bill", "reissue", "1"), "reissued already")
    assert await create_bills(pool, team=None, at=at("2026-01-23")) == []  # nothing new
