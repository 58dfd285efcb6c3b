"""`tokens demo`: one simulated billing month through the real worker path.

Three teams show every rule: a trial that runs out (a refused job), a yearly
email_outreach team with an admin-set limit (a provider failure that releases
its hold, a month-end bill), and a monthly sales_engagement team that crosses
the USD 50 threshold (a bill made by the capture that crossed it). Jobs go
through Redis and arq to the sandbox providers; the clock is simulated so the
month can end in seconds. The month is the current calendar month (UTC), so
what the demo spent is what `tokens billing` and the billing page show now.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker

from billing.reconcile import bill_dict, reconcile, team_bills
from billing.sender import sender_from_settings
from billing.stripe_client import make_stripe_client
from ledger.service import Ledger
from runtime.config import Settings
from worker.client import enqueue
from worker.queue import QUEUE
from worker.settings import worker_kwargs


def month_of(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) containing `now`: its first instant and the next month's."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


class SimClock:
    def __init__(self, start: datetime) -> None:
        self.value = start

    def now(self) -> datetime:
        return self.value


def _leads(n: int, domain: str, bad: int | None = None) -> dict[str, Any]:
    out = []
    for i in range(n):
        local = "providerdown" if i == bad else f"lead{i}"
        out.append({"id": f"{domain.split('.')[0]}-{i}", "email": f"{local}@{domain}"})
    return {"leads": out}


async def _customer(settings: Settings, name: str) -> str | None:
    client = make_stripe_client(settings)
    if client is None:
        return None
    cus = await client.v1.customers.create_async(
        {
            "name": name,
            "payment_method": "pm_card_visa",
            "invoice_settings": {"default_payment_method": "pm_card_visa"},
            "metadata": {"tokens_demo": "true"},
        },
    )
    return cus.id


async def run_demo(
    ledger: Ledger,
    settings: Settings,
    redis_url: str,
    progress: Any,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run the demo's month: its jobs at `now` (default: the real time), then its end."""
    run = uuid.uuid4().hex[:6]
    # One instant for every job: a demo started a moment before midnight on a
    # month's last day still spends in one month.
    started = (now or datetime.now(UTC)).replace(microsecond=0)
    month_start, month_end = month_of(started)
    clock = SimClock(started)
    teams = {"trial": f"trial-{run}", "yearly": f"yearly-{run}", "monthly": f"monthly-{run}"}

    await ledger.set_team(
        teams["trial"], plan="trial", seats=1, interval="month", anchor=month_start, at=clock.now()
    )
    await ledger.set_team(
        teams["yearly"],
        plan="email_outreach",
        seats=2,
        interval="year",
        anchor=month_start.replace(year=month_start.year - 1),  # a year ago to the day
        at=clock.now(),
        stripe_customer=await _customer(settings, teams["yearly"]),
    )
    await ledger.set_limit(
        teams["yearly"], 1000, actor="admin@yearly.example", role="admin", at=clock.now()
    )
    await ledger.set_team(
        teams["monthly"],
        plan="sales_engagement",
        seats=3,
        interval="month",
        anchor=month_start,
        at=clock.now(),
        stripe_customer=await _customer(settings, teams["monthly"]),
    )
    await ledger.set_limit(
        teams["monthly"], 10_000, actor="admin@monthly.example", role="admin", at=clock.now()
    )

    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        await redis.delete(QUEUE)
        batches: list[tuple[str, str, dict[str, Any] | None, int | None]] = [
            (teams["trial"], "ai_sequence", None, 1),
            (teams["trial"], "enrich", _leads(5, "trialco.example"), None),
            (
                teams["trial"],
                "ai_icebreaker",
                {"lead": {"email": "x@trialco.example", "first_name": "Ada"}},
                1,
            ),
            (teams["yearly"], "debounce", _leads(300, "yearly.example"), None),
            (teams["yearly"], "enrich", _leads(30, "yearlyco.example", bad=7), None),
            (teams["monthly"], "ai_sequence", None, 40),
            (teams["monthly"], "enrich", _leads(500, "monthly.example"), None),
        ]
        job_ids: list[str] = []
        for team, action, payload, qty in batches:
            jobs = await enqueue(redis, ledger.catalog, team, action, quantity=qty, payload=payload)
            job_ids += [j.job_id for j in jobs]
        progress(0, len(job_ids))

        demo_settings = settings.model_copy(
            update={"retry_backoff_seconds": 0.01, "job_max_tries": 3}
        )
        worker = Worker(**worker_kwargs(demo_settings, redis_url, burst=True, clock=clock.now))

        async def watch() -> None:
            while True:
                left = await redis.zcard(QUEUE)
                progress(len(job_ids) - left, len(job_ids))
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        try:
            await worker.main()
        finally:
            watcher.cancel()
            await worker.close()
        progress(len(job_ids), len(job_ids))
        outcomes: dict[str, int] = {}
        from worker.client import result

        for jid in job_ids:
            out = await result(redis, jid)
            outcomes[out["status"]] = outcomes.get(out["status"], 0) + 1
    finally:
        await redis.aclose()

    # The month ends: bill what is left, monthly and yearly alike.
    clock.value = month_end + timedelta(seconds=1)
    sender = sender_from_settings(ledger.pool, settings, clock.now)
    for team in teams.values():
        await reconcile(ledger.pool, sender, team=team, at=clock.now())

    read_at = started
    sections = [await ledger.billing(t, at=read_at, recent=5) for t in teams.values()]
    bills = []
    for t in teams.values():
        bills += await team_bills(ledger.pool, t)
    bills.sort(key=lambda b: b.id or 0)
    return {
        "teams": teams,
        "jobs": len(job_ids),
        "outcomes": outcomes,
        "sections": sections,
        "read_at": read_at,
        "bills": [bill_dict(b) for b in bills],
        "stripe": settings.stripe_api_key is not None,
    }
