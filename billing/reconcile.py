"""One reconcile run: make the bills that are due, then send every unsent bill.

Runs from cron (`tokens reconcile`), periodically inside the worker, and
right after a capture lifts a team over its threshold. Any number of runs
may overlap: bills are made on locked month rows (sql/functions.sql) and
sent under a lease (sender.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from billing.models import Bill
from billing.sender import SQL, StripeSender
from ledger import validate
from ledger.queries import q
from runtime.metrics import BILLS, RECONCILE_SECONDS

log = structlog.get_logger("tokens.billing")

Progress = Callable[[int, int], None]


def bill_status(bill: Bill) -> str:
    """What finance should read: paid, open (finalized, payment pending), unsent, failed."""
    if bill.step == "paid":
        return "paid"
    if bill.error_code in ("stripe_not_configured",):
        return "unsent"
    if bill.last_error:
        return "failed"
    if bill.step == "finalized":
        return "open"
    return "pending"


def bill_dict(bill: Bill) -> dict[str, Any]:
    return {
        "bill_id": bill.id,
        "team": bill.team_id,
        "reason": bill.reason,
        "tokens": bill.tokens,
        "amount_cents": bill.amount_cents,
        "currency": bill.currency,
        "unit_price_usd": str(bill.unit_price.normalize()),
        "period_start": bill.period_start,
        "period_end": bill.period_end,
        "status": bill_status(bill),
        "step": bill.step,
        "stripe_invoice_id": bill.stripe_invoice_id,
        "stripe_invoice_status": bill.stripe_invoice_status,
        "error": bill.last_error,
        "error_code": bill.error_code,
        "attempts": bill.attempts,
    }


@dataclass
class ReconcileReport:
    created: list[Bill] = field(default_factory=list)
    touched: dict[int, Bill] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def bills(self) -> list[Bill]:
        return sorted(self.touched.values(), key=lambda b: b.id or 0)

    @property
    def sent(self) -> int:
        return sum(bill_status(b) in ("paid", "open") for b in self.touched.values())

    @property
    def failed(self) -> int:
        return sum(bill_status(b) == "failed" for b in self.touched.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "bills_created": len(self.created),
            "bills_sent": self.sent,
            "bills_failed": self.failed,
            "bills_unsent": sum(bill_status(b) == "unsent" for b in self.touched.values()),
            "seconds": round(self.seconds, 3),
            "bills": [bill_dict(b) for b in self.bills],
        }


async def create_bills(pool: asyncpg.Pool, *, team: str | None, at: datetime) -> list[Bill]:
    rows = await pool.fetch(q("create_bills", SQL), team, at)
    bills = [Bill.model_validate(dict(r)) for r in rows]
    for b in bills:
        log.info(
            "bill_created",
            bill_id=b.id,
            team=b.team_id,
            reason=b.reason,
            tokens=b.tokens,
            amount_cents=b.amount_cents,
            period_start=b.period_start.isoformat(),
        )
    return bills


async def reconcile(
    pool: asyncpg.Pool,
    sender: StripeSender,
    *,
    team: str | None,
    at: datetime,
    concurrency: int = 8,
    progress: Progress | None = None,
) -> ReconcileReport:
    started = time.perf_counter()
    at = validate.moment(at)
    if team is not None:
        validate.team_id(team)
        if await pool.fetchval("SELECT 1 FROM teams WHERE id = $1", team) is None:
            from ledger.errors import UnknownTeam

            raise UnknownTeam(team)
    report = ReconcileReport()
    report.created = await create_bills(pool, team=team, at=at)
    ids = [r["id"] for r in await pool.fetch(q("bills_to_send", SQL), team)]
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def send(bill_id: int) -> None:
        nonlocal done
        async with gate:
            bill = await sender.send(bill_id)
        if bill is not None:
            report.touched[bill_id] = bill
        done += 1
        if progress is not None:
            progress(done, len(ids))

    await asyncio.gather(*(send(i) for i in ids))
    for b in report.created:
        if b.id is not None and b.id not in report.touched:
            report.touched[b.id] = b  # being sent by a concurrent run: still reported
    report.seconds = time.perf_counter() - started
    RECONCILE_SECONDS.observe(report.seconds)
    BILLS.labels("created").inc(len(report.created))
    BILLS.labels("sent").inc(report.sent)
    BILLS.labels("failed").inc(report.failed)
    log.info(
        "reconciled",
        team=team,
        created=len(report.created),
        sent=report.sent,
        failed=report.failed,
        seconds=round(report.seconds, 3),
    )
    return report


async def team_bills(pool: asyncpg.Pool, team: str | None = None) -> list[Bill]:
    rows = (
        await pool.fetch(q("team_bills", SQL), team)
        if team is not None
        else await pool.fetch(q("all_bills", SQL))
    )
    return [Bill.model_validate(dict(r)) for r in rows]
