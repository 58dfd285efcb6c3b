"""One reconcile run: make the bills that are due, send every unsent bill, and
learn what Stripe did with the finalized ones.

Runs from cron (`tokens reconcile`), periodically inside the worker, and
right after a capture lifts a team over its threshold. Any number of runs
may overlap: bills are made on locked month rows (billing/sql/functions.sql) and
sent under a lease with a fencing token (sender.py).

Every run reads the Stripe status of each bill that is open, payment_failed or
uncollectible (README "Billing with Stripe"): Stripe's automatic collection pays most invoices, and
the run learns it without a pay request. Many bills are read with a few list
requests (invoices created since the oldest of them, 100 a page: listing is
consistent, unlike search); a bill the listing did not show is read alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import stripe
import structlog

from billing.rows import BillRow, bill_dict
from billing.sender import StripeSender
from db.queries import q
from ledger import validate
from runtime.metrics import BILLS, RECONCILE_SECONDS

__all__ = ["ReconcileReport", "bill_dict", "bill_status", "reconcile", "team_bills"]

log = structlog.get_logger("tokens.billing")

SQL = "billing.sql"

Progress = Callable[[int, int], None]


# Bills whose Stripe status every run reads.
READ_STATUSES = ("open", "payment_failed", "uncollectible")
# From this many bills to read on, one list request can stand for many retrieves.
LIST_FROM = 3
LIST_PAGE = 100


def bill_status(bill: BillRow) -> str:
    """What finance reads (README "Billing with Stripe"): unsent, sending, open, paid,
    payment_failed, void, uncollectible, failed; `reissued` for a bill `tokens bill
    reissue` replaced."""
    return bill.status


@dataclass
class ReconcileReport:
    created: list[BillRow] = field(default_factory=list)
    touched: dict[int, BillRow] = field(default_factory=dict)
    # Bills this run could not send, or whose payment was declined in this run.
    new_failures: set[int] = field(default_factory=set)
    # Bills left for the next run: the run's time budget was spent.
    deferred: int = 0
    seconds: float = 0.0

    @property
    def bills(self) -> list[BillRow]:
        return sorted(self.touched.values(), key=lambda b: b.id or 0)

    @property
    def sent(self) -> int:
        """Bills at Stripe, finalized: open, paid or payment_failed."""
        return sum(b.status in ("paid", "open", "payment_failed") for b in self.touched.values())

    @property
    def failed(self) -> int:
        """New failures of this run (`tokens reconcile` exits non-zero); a bill waiting
        out its retry delay is not one."""
        return len(self.new_failures)

    def as_dict(self) -> dict[str, Any]:
        bills = self.touched.values()
        return {
            "bills_created": len(self.created),
            "bills_sent": self.sent,
            "bills_failed": self.failed,
            "bills_paid": sum(b.status == "paid" for b in bills),
            "bills_unsent": sum(b.status == "unsent" for b in bills),
            "bills_deferred": self.deferred,
            "seconds": round(self.seconds, 3),
            "bills": [bill_dict(b) for b in self.bills],
        }


# Bill-making over every team at a month's end reads every due month and its charges
# in one statement: minutes with many teams, past the deadline of a request's statement
# (TOKENS_DB_STATEMENT_TIMEOUT_SECONDS). It gets its own, still bounded.
BILL_MAKING_TIMEOUT_S = 900


async def create_bills(
    pool: asyncpg.Pool,
    *,
    team: str | None,
    at: datetime,
    timeout_s: float = BILL_MAKING_TIMEOUT_S,
) -> list[BillRow]:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT set_config('statement_timeout', $1, true)", str(int(timeout_s * 1000))
        )
        rows = await conn.fetch(q("create_bills", SQL), team, at, timeout=timeout_s + 5)
    bills = [BillRow.from_record(r) for r in rows]
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


async def read_invoices(client: Any, rows: list[asyncpg.Record]) -> dict[str, Any]:
    """The invoices of bills whose Stripe status this run reads, by id, as few list
    requests show them (newest first, created since the oldest one). What the
    listing misses is left out: the sender retrieves it."""
    wanted = {
        r["stripe_invoice_id"]: r["stripe_invoice_created"]
        for r in rows
        if r["status"] in READ_STATUSES and r["stripe_invoice_id"]
    }
    created = [c for c in wanted.values() if c is not None]
    found: dict[str, Any] = {}
    if client is None or len(created) < LIST_FROM:
        return found
    params: dict[str, Any] = {
        "created": {"gte": min(created)},
        "limit": LIST_PAGE,
        # A deleted customer shows as {"id", "deleted": true}: its open invoice can no
        # longer be paid (the sender fails the bill with customer_deleted).
        "expand": ["data.customer"],
    }
    # Other invoices of the account may share the window; give up well before paging
    # costs more than reading each bill alone.
    for _ in range(len(created) // 2 // LIST_PAGE + 2):
        try:
            page = await client.v1.invoices.list_async(params)
        except stripe.StripeError as exc:
            log.warning("invoice_list_failed", error=str(exc))
            break
        found.update((inv.id, inv) for inv in page.data if inv.id in wanted)
        if len(found) == len(wanted) or not page.has_more or not page.data:
            break
        params["starting_after"] = page.data[-1].id
    return found


async def reconcile(
    pool: asyncpg.Pool,
    sender: StripeSender,
    *,
    team: str | None,
    at: datetime,
    concurrency: int = 8,
    progress: Progress | None = None,
    time_budget: float | None = None,
) -> ReconcileReport:
    """One run. `time_budget`: seconds after which no further bill is started (the
    worker's job stays within its timeout; the next run takes the rest)."""
    started = time.perf_counter()
    at = validate.moment(at)
    if team is not None:
        validate.team_id(team)
        if await pool.fetchval("SELECT 1 FROM teams WHERE id = $1", team) is None:
            from ledger.errors import UnknownTeam

            raise UnknownTeam(team)
    report = ReconcileReport()
    report.created = await create_bills(pool, team=team, at=at)
    rows = await pool.fetch(q("bills_to_send", SQL), team)
    seen = await read_invoices(sender.client, rows)
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def send(row: asyncpg.Record) -> None:
        nonlocal done
        async with gate:
            if time_budget is not None and time.perf_counter() - started > time_budget:
                report.deferred += 1
                sent = None
            else:
                sent = await sender.send(row["id"], seen.get(row["stripe_invoice_id"]))
        if sent is not None and not sent.waiting:
            report.touched[row["id"]] = sent.bill
            if sent.new_failure:
                report.new_failures.add(row["id"])
        done += 1
        if progress is not None:
            progress(done, len(rows))

    await asyncio.gather(*(send(r) for r in rows))
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
        deferred=report.deferred,
        seconds=round(report.seconds, 3),
    )
    return report


async def team_bills(pool: asyncpg.Pool, team: str | None = None) -> list[BillRow]:
    rows = (
        await pool.fetch(q("team_bills", SQL), team)
        if team is not None
        else await pool.fetch(q("all_bills", SQL))
    )
    return [BillRow.from_record(r) for r in rows]
