"""The actors of the money path, interleaved by a seeded scheduler, with the invariants
checked after every step and at rest (test_interleaving.py, next to it, runs it).

Actors, on the real ledger (embedded Postgres) and the Stripe fake:

- the worker: `worker.metering.metered` jobs whose provider (a respx stand-in for an
  HTTP verify vendor) answers when the scheduler says: a known status, an unreadable
  2xx, 429 / 5xx (the job is put back and runs again), 401 (no search); arq's keys of
  each job in Redis (a job whose key expires while it waits is dropped, never run
  again); the hold-expiry sweep (`worker.tasks.expire_holds`, which reads those keys and
  the search memos); a capture that meets a lock held by bill-making (lock timeout);
- two reconcilers (`billing.reconcile.reconcile`, two `StripeSender`s), alone, both at
  once, or with other actors acting while a run is under way, at any moment (month ends
  included);
- Stripe: its automatic collection, declines, latency, 429s, 5xx, lost answers, keys
  expiring after a day, and its webhooks delivered late, out of order, twice and in
  bursts, signed, to the HTTP API's `POST /v1/stripe/webhook` (on its own small pool,
  which also answers `GET /v1/teams/{team}/billing` meanwhile);
- finance in the Dashboard: void, mark uncollectible, discount / fix / finalize / delete
  a draft, delete a customer; `bill reissue`;
- the app: charges, seat and plan changes at Stripe (also told to Tokens directly with
  `Ledger.set_team`), subscription moves.

Every step draws from its own random generator (seed, step): the same seed replays the
same schedule, and a step can be left out without changing the others (minimizing).
The order of concurrent requests depends on timing, so a failure that needs a race may
take a few runs of its seed to show again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import respx
import stripe
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.worker import Retry

from api.app import Services, create_app
from billing.bills import ReissueRefused, reissue_bill
from billing.reconcile import reconcile
from billing.sender import StripeSender
from billing.stripe_client import build_client
from db.pool import PooledConnection, create_pool
from ledger.catalog import DEFAULT_CATALOG, Catalog, Plan
from ledger.service import Ledger
from runtime.config import Settings
from testing.stripe import StripeFake
from tests.api_helpers import SECRET, WEBHOOK_SECRET, bearer
from worker.memo import JOB_KEY_TTL_S, RedisSearchMemo
from worker.metering import OutageRetry, metered
from worker.payloads import Lead
from worker.providers.http import HttpVerifyProvider
from worker.tasks import expire_holds

CATALOG = Catalog(
    actions=DEFAULT_CATALOG.actions,
    plans={
        "trial": DEFAULT_CATALOG.plans["trial"],
        "email_outreach": Plan(free_tokens=250, stripe_prices=("price_eo_m",)),
        "sales_engagement": Plan(free_tokens=500, stripe_prices=("price_se_m",)),
    },
)
PRICES = {"email_outreach": "price_eo_m", "sales_engagement": "price_se_m"}
START = datetime(2026, 1, 1, tzinfo=UTC)
ANCHOR = int(START.timestamp())
PROVIDER = "https://verify.interleave.test"
HOLD_TTL = timedelta(hours=2)
JOB_KEY_TTL = timedelta(seconds=JOB_KEY_TTL_S)  # arq drops a queued job a day after enqueue
THRESHOLD_TOKENS = 5000  # USD 50 at USD 0.01

# Actions that meet a defect known and being fixed on another branch: off unless
# TOKENS_INTERLEAVE_ALL=1 (or named in TOKENS_INTERLEAVE_ENABLE, comma-separated).
# Each names what it does; the lead turns them on once the fixes are merged.
# Every action is on today: the flags the actions check (`World.on`) are the ones
# listed here, e.g. "capture_meets_lock": "what the action does, what goes wrong today".
PENDING_FIXES: dict[str, str] = {}


def month_start(n: int) -> datetime:
    year, month = divmod(n, 12)
    return datetime(START.year + year, month + 1, 1, tzinfo=UTC)


def month_index(moment: datetime) -> int:
    return (moment.year - START.year) * 12 + moment.month - 1


class Violation(AssertionError):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


@dataclass
class Job:
    job_id: str
    team: str
    lead: str
    tries: int = 0
    searched: bool = False  # a vendor answered 2xx: the search happened
    # queued | running | retry | done | failed | dropped (arq's job key expired in the queue)
    state: str = "queued"
    key_expires: datetime | None = None  # arq's job key, by the world's clock
    answer: str = "valid"
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.job_id}:{self.lead}"


@dataclass
class Grant:
    """A state of the team's current subscription at Stripe, from `since`; Tokens knows
    it once told (the app) or once an event of that subscription is handled after it."""

    since: datetime
    free: int
    subscription: str
    told: datetime | None = None
    # In the order of what happens (several steps share one moment of the clock): only a
    # delivery after the change can have read it.
    order: int = 0


@dataclass
class Team:
    name: str
    customer: str
    subscription: str  # the current one
    old_subscriptions: list[str] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    # States of a subscription the team has left, made while Tokens could not know it
    # had (no event of a later subscription delivered yet): Tokens follows them, rightly,
    # until it learns of the later one.
    unseen_moves: list[Grant] = field(default_factory=list)

    def later(self, sub: str) -> list[str]:
        """The subscriptions the team moved to after `sub`."""
        history = [*self.old_subscriptions, self.subscription]
        return history[history.index(sub) + 1 :]


@dataclass
class Send:
    bill_id: int
    start: int
    end: int = 1 << 62
    claimed: bool = False


class TrackedSender(StripeSender):
    """A StripeSender that records when (in the fake's moments) each send ran."""

    def __init__(self, world: World, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world = world

    async def send(self, bill_id: int, invoice: Any = None) -> Any:
        record = Send(bill_id, self.world.fake.moment)
        self.world.sends.append(record)
        try:
            result = await super().send(bill_id, invoice)
        finally:
            record.end = self.world.fake.moment
        record.claimed = result is not None
        return result


class World:
    """Everything the actors share, and the model the invariants compare against."""

    def __init__(
        self,
        *,
        seed: int,
        pool: asyncpg.Pool,
        api_pool: asyncpg.Pool,
        worker_pool: asyncpg.Pool,
        redis: Any,
        fake: StripeFake,
        enabled: set[str],
        teams: int,
    ) -> None:
        self.seed = seed
        self.pool = pool
        self.api_pool = api_pool
        self.fake = fake
        self.enabled = enabled
        self.n_teams = teams
        self.now = START + timedelta(hours=1)
        self.ledger = Ledger(pool, CATALOG)
        self.api_ledger = Ledger(api_pool, CATALOG)
        self.worker_ledger = Ledger(worker_pool, CATALOG)
        self.redis = redis
        self.memo = RedisSearchMemo(redis, int(HOLD_TTL.total_seconds()) + JOB_KEY_TTL_S)
        settings = Settings(
            hold_ttl_seconds=int(HOLD_TTL.total_seconds()),
            app_secret=SECRET,
            stripe_webhook_secret=WEBHOOK_SECRET,  # type: ignore[call-arg]
        )
        # The worker's hold-expiry sweep (worker/tasks.py), on arq's keys in Redis.
        self.sweep_ctx: dict[str, Any] = {
            "deps": {"settings": settings, "ledger": self.worker_ledger, "clock": self.clock},
            "redis": redis,
        }
        self.run_id = uuid.uuid4().hex[:8]
        self.teams: dict[str, Team] = {}
        self.jobs: dict[str, Job] = {}
        self.sends: list[Send] = []
        self.pending: list[dict[str, Any]] = []  # emitted, not delivered yet
        self.delivered: list[dict[str, Any]] = []
        self.pays_checked = 0
        self.checks = 0  # steps after which every invariant was checked
        # Deliveries of each subscription's events: (the clock, the order of happening).
        self.sub_seen: dict[str, list[tuple[datetime, int]]] = {}
        self.happened = 0
        self.keys_expired_at = self.now
        self.log: list[str] = []
        self.http = httpx.AsyncClient()
        self.provider = HttpVerifyProvider(PROVIDER, "vendor-key", self.http, timeout=30)
        self.router = respx.MockRouter(base_url=PROVIDER, assert_all_called=False)
        self.router.post("/v1/verify").mock(side_effect=self._vendor)
        clock = self.clock
        # Stripe's webhooks and the billing read go through the HTTP API (its own pool).
        services = Services(
            settings=settings,
            ledger=self.api_ledger,
            redis=redis,
            stripe=fake.client(),
            app_secret=SECRET,
            webhook_secret=WEBHOOK_SECRET,
            clock=clock,
        )
        self.api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(settings, services)),
            base_url="http://api.test",
        )
        self.senders = [
            TrackedSender(
                self,
                pool,
                build_client(
                    fake.api_key,
                    fake.base,
                    max_rps=None,
                    max_total_rps=None,
                    max_network_retries=1,
                    backoff_base=0.002,
                    rate_limit_retries=4,
                ),
                clock,
                pay_after=timedelta(hours=1),
            )
            for _ in range(2)
        ]

    def clock(self) -> datetime:
        return self.now

    def on(self, flag: str) -> bool:
        return flag not in PENDING_FIXES or flag in self.enabled

    # -- set-up ----------------------------------------------------------------

    async def setup(self) -> None:
        self.router.start()
        self.fake.now = int(self.now.timestamp())
        await self.ledger.sync_catalog()
        for i in range(self.n_teams):
            name = f"t{i}"
            cus = self.fake.add_customer(payment_method=(i != 2))
            seats = 2
            sub = self.fake.add_subscription(
                cus, team=name, price="price_eo_m", quantity=seats, anchor=ANCHOR
            )
            await self.ledger.set_team(
                name,
                plan="email_outreach",
                seats=seats,
                interval="month",
                anchor=START,
                at=self.now,
                stripe_customer=cus,
            )
            await self.ledger.set_limit(name, 1_000_000, actor="ann", role="admin", at=self.now)
            team = Team(name, cus, sub["id"], grants=[Grant(START, 250 * seats, sub["id"], START)])
            self.teams[name] = team
        for event in self.fake.take_events():
            response = await post_event(self, event)
            assert response.status_code == 200, response.text

    async def close(self) -> None:
        for job in self.jobs.values():
            job.gate.set()
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.router.stop()
        await self.http.aclose()
        await self.api.aclose()
        keys = [p + j for j in self.jobs for p in (job_key_prefix, in_progress_key_prefix)]
        if keys:
            await self.redis.delete(*keys)

    # -- the vendor --------------------------------------------------------------

    async def _vendor(self, request: httpx.Request) -> httpx.Response:
        job = self.jobs[json.loads(request.content)["email"].split("@")[0]]
        await job.gate.wait()
        job.gate.clear()
        answer = job.answer
        if answer == "valid":
            job.searched = True
            return httpx.Response(200, json={"status": "deliverable"})
        if answer == "unknown_2xx":
            job.searched = True
            return httpx.Response(200, json={"status": "catch_all"})
        if answer == "429":
            return httpx.Response(429, json={"error": "slow down"})
        if answer == "503":
            return httpx.Response(503, json={"error": "down"})
        return httpx.Response(401, json={"error": "bad key"})

    # -- invariants ----------------------------------------------------------------

    async def check(
        self, *, at_rest: bool = False, after_reconcile: datetime | None = None
    ) -> None:
        await self._check_drift()
        await self._check_free()
        await self._check_bills()
        await self._check_months(after_reconcile)
        self._check_stripe(at_rest)
        self._check_pays()
        await self._check_searches(at_rest)
        if at_rest:
            await self._check_teams()

    async def _check_drift(self) -> None:
        drift = await self.ledger.drift()
        if drift:
            raise Violation("(vi) ledger drift", str(drift))

    def _known(self, grant: Grant) -> datetime | None:
        """When Tokens could first know this state of the subscription."""
        seen = [t for t, n in self.sub_seen.get(grant.subscription, []) if n > grant.order]
        times = [t for t in (grant.told, min(seen, default=None)) if t is not None]
        return min(times, default=None)

    def _bound(self, team: str, start: datetime, end: datetime) -> int:
        """The most free tokens a month [start, end) may grant: the largest state of the
        team's current subscription in effect during it, a state staying in effect until
        Tokens could know the next one."""
        grants = self.teams[team].grants
        bound = 0
        for i, grant in enumerate(grants):
            until = self._known(grants[i + 1]) if i + 1 < len(grants) else None
            # A state learnt at the very moment a month starts may have opened it.
            if grant.since < end and (until is None or until >= start):
                bound = max(bound, grant.free)
        for grant in self.teams[team].unseen_moves:
            until = self._left(team, grant.subscription)
            if grant.since < end and (until is None or until >= start):
                bound = max(bound, grant.free)
        return bound

    def _left(self, team: str, sub: str) -> datetime | None:
        """When Tokens could first know that the team left `sub`: an event of a later
        subscription handled (the app's team set names no subscription)."""
        seen = [t for later in self.teams[team].later(sub) for t, _ in self.sub_seen.get(later, [])]
        return min(seen, default=None)

    async def _check_free(self) -> None:
        rows = await self.pool.fetch(
            "SELECT team_id, period_start, period_end, free_granted, free_held, free_spent"
            " FROM billing_months ORDER BY team_id, period_start"
        )
        for r in rows:
            start, end = r["period_start"], r["period_end"]
            n = month_index(start)
            if (start, end) != (month_start(n), month_start(n + 1)):
                raise Violation(
                    "(iv) free tokens",
                    f"team {r['team_id']}: a billing month {start:%Y-%m-%d %H:%M} .. "
                    f"{end:%Y-%m-%d %H:%M} cut out of its subscription's month (anchor Jan 1): "
                    "a second grant in one month",
                )
            bound = self._bound(r["team_id"], start, end)
            if r["free_granted"] > bound or r["free_held"] + r["free_spent"] > r["free_granted"]:
                raise Violation(
                    "(iv) free tokens",
                    f"team {r['team_id']} month {start:%Y-%m-%d}: granted {r['free_granted']}, "
                    f"spent {r['free_spent']} + held {r['free_held']}; the current "
                    f"subscription allows at most {bound}",
                )

    async def _bill_rows(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """
            WITH RECURSIVE chain AS (
                SELECT id, id AS root FROM bills WHERE reissue_of IS NULL
                UNION ALL
                SELECT b.id, chain.root FROM bills b JOIN chain ON b.reissue_of = chain.id
            )
            SELECT b.*, chain.root FROM bills b JOIN chain ON chain.id = b.id ORDER BY b.id
            """
        )

    async def _check_bills(self) -> None:
        bills = await self._bill_rows()
        heads: dict[int, list[asyncpg.Record]] = {}
        for b in bills:
            heads.setdefault(b["root"], [])
            if b["status"] != "reissued":
                heads[b["root"]].append(b)
        for root, live in heads.items():
            if len(live) != 1:
                raise Violation(
                    "(i) one live bill",
                    f"bill chain {root} has {len(live)} bills not reissued: "
                    f"{[(b['id'], b['status']) for b in live]}",
                )
        linked = await self.pool.fetch(
            """
            SELECT bc.bill_id, sum(c.additional_tokens) AS tokens, bool_and(c.state = 'captured')
                   AS captured
            FROM bill_charges bc JOIN charges c ON c.id = bc.charge_id GROUP BY bc.bill_id
            """
        )
        by_root = {r["bill_id"]: r for r in linked}
        for b in bills:
            if b["reissue_of"] is not None:
                continue
            got = by_root.get(b["id"])
            if got is None or got["tokens"] != b["tokens"] or not got["captured"]:
                raise Violation(
                    "(i) one live bill",
                    f"bill {b['id']} bills {b['tokens']} tokens but its charges hold "
                    f"{None if got is None else got['tokens']}",
                )
        self.bills = bills

    async def _check_months(self, reconciled_at: datetime | None) -> None:
        months = await self.pool.fetch(
            """
            SELECT bm.team_id, bm.period_start, bm.period_end, bm.additional_spent,
                   bm.additional_billed, bm.closed_at,
                   (SELECT coalesce(sum(b.tokens), 0) FROM bills b
                     WHERE b.team_id = bm.team_id AND b.period_start = bm.period_start
                       AND b.reissue_of IS NULL) AS on_bills,
                   (SELECT coalesce(sum(c.additional_tokens), 0) FROM charges c
                     WHERE c.team_id = bm.team_id AND c.period_start = bm.period_start
                       AND c.state = 'captured'
                       AND NOT EXISTS (SELECT 1 FROM bill_charges bc WHERE bc.charge_id = c.id))
                     AS unbilled,
                   EXISTS (SELECT 1 FROM charges c WHERE c.team_id = bm.team_id
                            AND c.period_start = bm.period_start AND c.state = 'held') AS holds
            FROM billing_months bm
            """
        )
        for m in months:
            where = f"team {m['team_id']} month {m['period_start']:%Y-%m-%d}"
            if m["on_bills"] != m["additional_billed"]:
                raise Violation(
                    "(i) one live bill",
                    f"{where}: {m['additional_billed']} tokens marked billed, "
                    f"{m['on_bills']} on bills",
                )
            if m["unbilled"] != m["additional_spent"] - m["additional_billed"]:
                raise Violation(
                    "(i) one live bill",
                    f"{where}: {m['unbilled']} captured tokens on no bill, the month says "
                    f"{m['additional_spent'] - m['additional_billed']}",
                )
            if reconciled_at is None:
                continue
            if m["period_end"] <= reconciled_at and not m["holds"] and m["unbilled"]:
                raise Violation(
                    "(i) one live bill",
                    f"{where}: ended and settled, reconciled at {reconciled_at:%Y-%m-%d %H:%M}, "
                    f"{m['unbilled']} tokens still unbilled",
                )
            if m["unbilled"] >= THRESHOLD_TOKENS:
                raise Violation(
                    "(i) one live bill",
                    f"{where}: {m['unbilled']} unbilled tokens over the threshold after a run",
                )

    def _collectible(self) -> dict[int, list[dict[str, Any]]]:
        """Tokens' invoices Stripe has collected, or can still collect (open, of a customer
        not deleted), by bill chain root."""
        root_of = {b["id"]: b["root"] for b in self.bills}
        out: dict[int, list[dict[str, Any]]] = {}
        for inv in self.fake.invoices.values():
            bill_id = inv["metadata"].get("tokens_bill_id")
            if bill_id is None or inv["status"] not in ("open", "paid"):
                continue
            deleted = self.fake.customers.get(inv["customer"], {}).get("deleted")
            if inv["status"] == "open" and deleted:  # nobody can pay it any more
                continue
            if inv["total"] == 0 and inv["amount_paid"] == 0:
                # Collects nothing: an empty draft finance finalized is paid at 0 at once
                # (its bill stops with total_mismatch until it is reissued).
                continue
            root = root_of.get(int(bill_id))
            if root is None:
                raise Violation("(ii) Stripe = bills", f"invoice {inv['id']} of no bill")
            out.setdefault(root, []).append(inv)
        return out

    def _check_stripe(self, at_rest: bool) -> None:
        by_id = {b["id"]: b for b in self.bills}
        collectible = self._collectible()
        for root, invoices in collectible.items():
            if len(invoices) > 1:
                raise Violation(
                    "(ii) Stripe = bills",
                    f"bill chain {root} ({by_id[root]['tokens']} tokens) has "
                    f"{len(invoices)} collectible invoices: "
                    f"{[(i['id'], i['status'], i['total']) for i in invoices]}",
                )
            inv = invoices[0]
            bill = by_id[int(inv["metadata"]["tokens_bill_id"])]
            if inv["total"] != bill["amount_cents"] and inv["amount_paid"] != bill["amount_cents"]:
                raise Violation(
                    "(ii) Stripe = bills",
                    f"invoice {inv['id']} ({inv['status']}) totals {inv['total']}, its bill "
                    f"{bill['id']} is {bill['amount_cents']}",
                )
        if not at_rest:
            return
        expected: dict[str, int] = {}
        held: dict[str, int] = {}
        for b in self.bills:
            if b["status"] in ("open", "payment_failed", "paid"):
                expected[b["team_id"]] = expected.get(b["team_id"], 0) + b["amount_cents"]
                inv = self.fake.invoices.get(b["stripe_invoice_id"] or "")
                want = "paid" if b["status"] == "paid" else "open"
                if inv is None or inv["status"] != want:
                    raise Violation(
                        "(ii) Stripe = bills",
                        f"at rest, bill {b['id']} is {b['status']} but its invoice "
                        f"{b['stripe_invoice_id']} is {None if inv is None else inv['status']}",
                    )
        for invoices in collectible.values():
            for inv in invoices:
                team = inv["metadata"]["team"]
                held[team] = held.get(team, 0) + inv["total"]
        if held != expected:
            raise Violation(
                "(ii) Stripe = bills",
                f"at rest, Stripe holds open or paid {held}, the live bills say {expected}",
            )

    def _check_pays(self) -> None:
        bad = ("void", "uncollectible", "paid")
        for pay in self.fake.pay_attempts[self.pays_checked :]:
            if pay.status not in bad:
                continue
            claimed = [
                s
                for s in self.sends
                if s.claimed and str(s.bill_id) == pay.bill_id and s.start <= pay.moment <= s.end
            ]
            since = claimed[0].start if claimed else pay.moment
            if pay.status_since < since:
                raise Violation(
                    "(iii) no pay of a closed invoice",
                    f"a pay request for bill {pay.bill_id} reached invoice {pay.invoice}, "
                    f"{pay.status} since moment {pay.status_since}, before its send began "
                    f"(moment {since})",
                )
        self.pays_checked = len(self.fake.pay_attempts)

    async def _check_searches(self, at_rest: bool) -> None:
        rows = await self.pool.fetch(
            "SELECT idempotency_key, state FROM charges WHERE job_id IS NOT NULL"
        )
        state = {r["idempotency_key"]: r["state"] for r in rows}
        for job in self.jobs.values():
            got = state.get(job.key)
            if job.searched and got in ("released", "expired"):
                raise Violation(
                    "(v) every search captured once",
                    f"job {job.job_id}: the vendor searched, its hold was {got} "
                    f"(job {job.state}: {job.error or job.result})",
                )
            if not job.searched and got == "captured":
                raise Violation(
                    "(v) every search captured once",
                    f"job {job.job_id}: captured though no vendor searched",
                )
            if at_rest and job.searched and got != "captured":
                raise Violation(
                    "(v) every search captured once",
                    f"at rest, job {job.job_id} searched and its charge is {got}",
                )

    async def _check_teams(self) -> None:
        for team in self.teams.values():
            row = await self.ledger.get_team(team.name)
            sub = self.fake.subscriptions[team.subscription]
            item = sub["items"]["data"][0]
            plan = CATALOG.plan_for_price(item["price"]["id"])
            want = (team.subscription, plan, item["quantity"], None)
            got = (row.stripe_subscription, row.plan, row.seats, row.subscription_ended_at)
            if got != want:
                raise Violation(
                    "(iv) free tokens",
                    f"at rest, team {team.name} is {got}; its current subscription says {want}",
                )


# -- actions ------------------------------------------------------------------------

Action = Callable[[World, random.Random], Awaitable[str]]


async def advance_clock(w: World, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:  # to just before or just after the next month end
        end = month_start(month_index(w.now) + 1)
        target = end + timedelta(minutes=rng.choice([-30, -1, 0, 1, 45]))
        w.now = max(w.now + timedelta(seconds=1), target)
    else:
        w.now += timedelta(minutes=rng.randint(1, 36 * 60))
    w.fake.now = int(w.now.timestamp())
    if w.now - w.keys_expired_at > timedelta(hours=24):
        w.fake.expire_idempotency_keys()  # Stripe prunes keys after about a day
        w.keys_expired_at = w.now
    return f"clock -> {w.now:%Y-%m-%d %H:%M}"


async def app_charge(w: World, rng: random.Random) -> str:
    team = rng.choice(list(w.teams))
    quantity = rng.choice([1, 7, 90, 400, 1200, 2600, 4999])
    key = f"app-{w.run_id}-{rng.getrandbits(32)}"
    held, _ = await w.ledger.charge(team, "debounce", quantity, key=key, at=w.now)
    return f"app charges {team} {quantity} tokens ({held.state}, {held.additional_tokens} add.)"


async def _job_runs(w: World, job: Job) -> None:
    """One run of the job as arq runs it: its job key from enqueue to its end, its
    in-progress key while it runs (what the sweep reads)."""
    job.state = "running"
    job.tries += 1
    if job.key_expires is None:
        job.key_expires = w.now + JOB_KEY_TTL
    await w.redis.set(job_key_prefix + job.job_id, b"1")
    await w.redis.set(in_progress_key_prefix + job.job_id, b"1")
    try:
        await _job_try(w, job)
    finally:
        await w.redis.delete(in_progress_key_prefix + job.job_id)
        if job.state in ("done", "failed"):
            await w.redis.delete(job_key_prefix + job.job_id)


async def _job_try(w: World, job: Job) -> None:

    async def search() -> Any:
        return await w.provider.verify(Lead(id=job.lead, email=f"{job.job_id}@lead.test"))

    try:
        job.result = await metered(
            w.worker_ledger,
            team=job.team,
            action="debounce",
            job_id=job.job_id,
            job_try=job.tries,
            max_tries=5,
            lead_id=job.lead,
            clock=w.clock,
            search=search,
            memo=w.memo,
        )
        job.state = "done"
    except OutageRetry:
        # Not one of its tries, and its job key renewed (worker/tasks.py give_try_back).
        job.tries -= 1
        job.state = "retry"
        job.key_expires = w.now + JOB_KEY_TTL
    except Retry:
        job.state = "retry" if job.tries < 5 else "failed"
    except Exception as exc:  # arq fails the job for good
        job.state = "failed"
        job.error = f"{type(exc).__name__}: {exc}"


async def worker_start_job(w: World, rng: random.Random) -> str:
    team = rng.choice(list(w.teams))
    job = Job(f"j{w.run_id}x{len(w.jobs)}", team, f"lead{len(w.jobs)}")
    w.jobs[job.job_id] = job
    job.task = asyncio.create_task(_job_runs(w, job))
    await asyncio.sleep(0.01)  # the hold is placed; the vendor waits for its answer
    return f"worker starts {job.job_id} for {team}"


ANSWERS = ["valid", "valid", "valid", "unknown_2xx", "429", "503", "401", "lock"]


async def worker_answer(w: World, rng: random.Random) -> str:
    waiting = [j for j in w.jobs.values() if j.state == "running" and not j.gate.is_set()]
    retrying = [j for j in w.jobs.values() if j.state == "retry"]
    if retrying and (not waiting or rng.random() < 0.3):
        job = rng.choice(retrying)
        job.task = asyncio.create_task(_job_runs(w, job))
        await asyncio.sleep(0.01)
        return f"worker runs {job.job_id} again (try {job.tries})"
    if not waiting:
        return "worker: nothing waits for its vendor"
    job = rng.choice(waiting)
    answer = rng.choice(ANSWERS)
    if answer == "unknown_2xx" and not w.on("provider_unknown_2xx"):
        answer = "valid"
    if answer == "lock" and not w.on("capture_meets_lock"):
        answer = "valid"
    if answer == "lock":
        # Bill-making holds the team's month rows while the capture comes in.
        job.answer = "valid"
        async with w.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT 1 FROM billing_months WHERE team_id = $1 FOR UPDATE", job.team
            )
            job.gate.set()
            await asyncio.sleep(0.4)
    else:
        job.answer = answer
        job.gate.set()
    assert job.task is not None
    await asyncio.wait_for(asyncio.shield(job.task), 10)
    return f"vendor answers {job.job_id}: {answer} -> {job.state} {job.result or job.error}"


async def worker_sweep(w: World, rng: random.Random) -> str:
    """arq drops the jobs whose key expired while they waited (never run again), then
    the worker's hold-expiry sweep runs."""
    dropped = []
    for job in w.jobs.values():
        waiting = job.state in ("queued", "retry")
        if waiting and job.key_expires is not None and job.key_expires <= w.now:
            job.state = "dropped"
            await w.redis.delete(job_key_prefix + job.job_id)
            dropped.append(job.job_id)
    out = await expire_holds(w.sweep_ctx)
    return f"arq drops {dropped}; sweep {out}"


async def _reconcile(w: World, sender: int) -> str:
    report = await reconcile(w.pool, w.senders[sender], team=None, at=w.now, concurrency=4)
    bills = [(b.id, b.status) for b in report.bills]
    return f"reconciler {sender}: created {len(report.created)}, bills {bills}"


async def reconcile_one(w: World, rng: random.Random) -> str:
    out = await _reconcile(w, rng.randrange(2))
    await w.check(after_reconcile=w.now)
    return out


async def reconcile_two(w: World, rng: random.Random) -> str:
    a, b = await asyncio.gather(_reconcile(w, 0), _reconcile(w, 1))
    return f"{a} | {b}"


MID_RUN: list[str] = []  # filled below: what may act while a run is under way


async def reconcile_busy(w: World, rng: random.Random) -> str:
    """A run with other actors acting while it is under way (Stripe at its own pace)."""
    run = asyncio.create_task(_reconcile(w, rng.randrange(2)))
    done = []
    for _ in range(rng.randint(1, 4)):
        await asyncio.sleep(rng.uniform(0, 0.03))
        name = rng.choice(MID_RUN)
        if name.startswith("finance") and not w.on("finance_during_reconcile"):
            continue
        done.append(await ACTIONS[name](w, rng))
    out = await run
    return f"{out} meanwhile [{'; '.join(done)}]"


def _tokens_invoices(w: World, *statuses: str) -> list[dict[str, Any]]:
    return [
        i
        for i in w.fake.invoices.values()
        if "tokens_bill_id" in i["metadata"] and i["status"] in statuses
    ]


async def stripe_collects(w: World, rng: random.Random) -> str:
    w.fake.run_automatic_collection()
    return "Stripe's automatic collection runs"


async def stripe_cards(w: World, rng: random.Random) -> str:
    team = w.teams[rng.choice([t for t in w.teams if t != "t2"] or list(w.teams))]
    if team.customer in w.fake.customers and w.fake.customers[team.customer].get("deleted"):
        return "Stripe: the customer is deleted"
    declines = rng.choice([False, False, True, "insufficient_funds"])
    w.fake.set_card_declines(team.customer, declines)
    return f"{team.name}'s card declines: {declines}"


FAULT_STEPS = ["create_invoice", "create_invoiceitem", "finalize", "pay", "retrieve_invoice",
               "list_invoices", "list_lines"]  # fmt: skip


async def stripe_fault(w: World, rng: random.Random) -> str:
    step = rng.choice(FAULT_STEPS)
    kind = rng.choice(["429", "429", "500", "timeout", "lose", "delay"])
    if kind == "429":
        w.fake.rate_limit_next(step)
    elif kind == "500":
        w.fake.fail_next(step, 500)
    elif kind == "timeout":
        w.fake.timeout_next(step)
    elif kind == "lose":
        w.fake.lose_response_next(step)
    else:
        w.fake.delay_next(step, 0.05)
    return f"Stripe will {kind} the next {step}"


def _take(w: World) -> None:
    w.pending.extend(w.fake.take_events())


async def post_event(w: World, event: dict[str, Any]) -> httpx.Response:
    """Stripe's delivery: the event signed with the endpoint's secret."""
    payload = json.dumps(event)
    t = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{t}.{payload}", WEBHOOK_SECRET)
    headers = {"Content-Type": "application/json", "Stripe-Signature": f"t={t},v1={signature}"}
    return await w.api.post("/v1/stripe/webhook", content=payload, headers=headers)


async def _deliver(w: World, events: list[dict[str, Any]]) -> list[str]:
    async def one(event: dict[str, Any]) -> str:
        response = await post_event(w, event)
        if response.status_code == 503:
            # Stripe unreadable, or the API busy: Stripe delivers the event again later.
            w.pending.append(event)
            code = response.json()["error"]["code"]
            return f"{event['type']}: not handled ({code}), comes again"
        if response.status_code != 200:
            raise Violation(
                "the API answers",
                f"{event['type']} {event['id']}: HTTP {response.status_code} {response.text[:200]}",
            )
        obj = event["data"]["object"]
        # A delivery of an event handled before reads nothing: it answers what it did then.
        if obj.get("object") == "subscription" and not response.json()["duplicate"]:
            w.happened += 1
            w.sub_seen.setdefault(obj["id"], []).append((w.now, w.happened))
        return f"{event['type']}: {response.json()['result'][:60]}"

    async def probe() -> None:
        await asyncio.sleep(0.005)
        team = next(iter(w.teams))
        got = await asyncio.wait_for(
            w.api.get(f"/v1/teams/{team}/billing", headers=bearer("service", team)), 5
        )
        if got.status_code != 200:
            raise Violation("the API answers", f"GET billing during deliveries: {got.text[:200]}")

    if not w.on("subscription_events_concurrent"):
        subs = [e for e in events if e["type"].startswith("customer.subscription.")]
        events = [e for e in events if e not in subs]
        for e in subs:
            await one(e)
        w.delivered.extend(subs)
    deliveries = asyncio.gather(*(one(e) for e in events))
    try:
        results, _ = await asyncio.wait_for(asyncio.gather(deliveries, probe()), 10)
    except TimeoutError:
        raise Violation(
            "the API answers",
            f"{len(events)} webhook deliveries at once did not finish in 10 s (API pool of "
            f"{w.api_pool.get_max_size()}), nor did a billing read",
        ) from None
    w.delivered.extend(events)
    return list(results)


async def webhooks_deliver(w: World, rng: random.Random) -> str:
    _take(w)
    if not w.pending:
        return "webhooks: none pending"
    rng.shuffle(w.pending)  # late and out of order
    if not w.on("old_subscription_events"):
        # Subscription events in the order Stripe sent them (still late, still twice).
        subs = sorted((e for e in w.pending if e["type"].startswith("customer.subscription.")),
                      key=lambda e: e["id"])  # fmt: skip
        w.pending = subs + [e for e in w.pending if e not in subs]
    n = rng.randint(1, min(len(w.pending), 4))
    batch, w.pending = w.pending[:n], w.pending[n:]
    return f"webhooks: {await _deliver(w, batch)}"


async def webhooks_again(w: World, rng: random.Random) -> str:
    if not w.delivered:
        return "webhooks: nothing to redeliver"
    batch = rng.sample(w.delivered, min(len(w.delivered), rng.randint(1, 3)))
    return f"webhooks redelivered: {await _deliver(w, batch)}"


async def webhooks_burst(w: World, rng: random.Random) -> str:
    """A month end's burst: every pending event at once, each delivered twice or more."""
    _take(w)
    events, w.pending = w.pending, []
    events += rng.sample(w.delivered, min(len(w.delivered), 6))
    size = w.api_pool.get_max_size()
    copies = [e for e in events for _ in range(rng.randint(1, 2))]
    if w.on("webhook_burst_over_pool"):
        while events and len(copies) < 3 * size:
            copies.append(rng.choice(events))
    else:
        copies = copies[: size - 1]
        w.pending += [e for e in events if e not in copies and e not in w.delivered]
    rng.shuffle(copies)
    results = await _deliver(w, copies)
    return f"webhook burst of {len(copies)}: {results[:4]}..."


async def finance_void(w: World, rng: random.Random) -> str:
    invoices = _tokens_invoices(w, "open", "uncollectible")
    if not invoices:
        return "finance: nothing to void"
    inv = rng.choice(invoices)
    w.fake.void_invoice(inv["id"])
    return f"finance voids {inv['id']} (bill {inv['metadata']['tokens_bill_id']})"


async def finance_uncollectible(w: World, rng: random.Random) -> str:
    invoices = _tokens_invoices(w, "open")
    if not invoices:
        return "finance: nothing to mark uncollectible"
    inv = rng.choice(invoices)
    w.fake.mark_uncollectible(inv["id"])
    return f"finance marks {inv['id']} uncollectible (bill {inv['metadata']['tokens_bill_id']})"


async def finance_draft(w: World, rng: random.Random) -> str:
    drafts = _tokens_invoices(w, "draft")
    if not drafts:
        return "finance: no draft"
    inv = rng.choice(drafts)
    what = rng.choice(["discount", "fix", "finalize", "delete"])
    if what == "finalize" and not w.on("finance_finalizes_draft"):
        what = "fix"
    if what == "discount":
        w.fake.discount_draft(inv["id"], percent_off=rng.choice([10, 50]))
    elif what == "fix":
        w.fake.remove_draft_discounts(inv["id"])
    elif what == "finalize":
        w.fake.remove_draft_discounts(inv["id"])
        w.fake.finalize_draft(inv["id"])
    else:
        w.fake.delete_draft(inv["id"])
    return f"finance: {what} draft {inv['id']} (bill {inv['metadata']['tokens_bill_id']})"


async def finance_reissue(w: World, rng: random.Random) -> str:
    rows = await w.pool.fetch(
        "SELECT id, status, error_code FROM bills WHERE status <> 'reissued' ORDER BY id"
    )
    if not rows:
        return "finance: nothing to reissue"
    ended = [r for r in rows if r["status"] in ("void", "failed")]
    row = rng.choice(ended if ended and rng.random() < 0.8 else rows)
    if row["error_code"] == "total_mismatch" and not w.on("reissue_total_mismatch"):
        return f"finance leaves bill {row['id']} (total_mismatch) alone"
    try:
        new = await reissue_bill(w.pool, row["id"], at=w.now)
    except ReissueRefused as exc:
        return f"finance: reissue {row['id']} refused ({str(exc)[:50]})"
    return f"finance reissues bill {row['id']} ({row['status']}) as {new['bill_id']}"


async def finance_delete_customer(w: World, rng: random.Random) -> str:
    """Deleting a customer cancels its subscriptions at Stripe; the app then moves the
    team to a new customer and subscription."""
    names = list(w.teams)
    if not w.on("customer_deleted_send_invoice"):
        names = [n for n in names if n != "t2"]  # t2's customer has no payment method
    team = w.teams[rng.choice(names)]
    old = team.customer
    w.fake.delete_customer(old)  # Stripe cancels its subscriptions with it
    team.customer = w.fake.add_customer()
    moved = await _move(w, rng, team)
    return f"finance deletes {team.name}'s customer {old}; {moved}"


async def _tell_tokens(w: World, rng: random.Random, team: Team, plan: str, seats: int) -> str:
    w.happened += 1
    grant = Grant(w.now, CATALOG.plans[plan].free_tokens * seats, team.subscription,
                  order=w.happened)  # fmt: skip
    team.grants.append(grant)
    if rng.random() < 0.5:
        await w.ledger.set_team(
            team.name, plan=plan, seats=seats, interval="month", anchor=START, at=w.now,
            stripe_customer=team.customer,
        )  # fmt: skip
        grant.told = w.now
        return " (and tells Tokens)"
    return ""


async def app_seats(w: World, rng: random.Random) -> str:
    team = w.teams[rng.choice(list(w.teams))]
    sub = w.fake.subscriptions[team.subscription]
    plan = rng.choice(list(PRICES))
    seats = rng.randint(1, 4)
    w.fake.update_subscription(team.subscription, quantity=seats, price=PRICES[plan])
    told = await _tell_tokens(w, rng, team, plan, seats)
    return f"app: {team.name} {sub['id']} -> {plan} x{seats}{told}"


async def _move(w: World, rng: random.Random, team: Team) -> str:
    # Stripe's `created` is in seconds, and a team follows the subscription created last
    # (billing/webhooks.py `follows`): the app makes a team's next subscription at least a
    # second after its last one, or no one could tell which is newer.
    last = w.fake.subscriptions[team.subscription]["created"]
    if last >= int(w.now.timestamp()):
        w.now += timedelta(seconds=last + 1 - int(w.now.timestamp()))
        w.fake.now = int(w.now.timestamp())
    plan = rng.choice(list(PRICES))
    seats = rng.randint(1, 3)
    sub = w.fake.add_subscription(
        team.customer, team=team.name, price=PRICES[plan], quantity=seats, anchor=ANCHOR
    )
    team.old_subscriptions.append(team.subscription)
    team.subscription = sub["id"]
    told = await _tell_tokens(w, rng, team, plan, seats)
    return f"app: {team.name} moves to {sub['id']} {plan} x{seats}{told}"


async def app_move(w: World, rng: random.Random) -> str:
    """The team moves to a new subscription (same anchor); the old one is canceled later."""
    return await _move(w, rng, w.teams[rng.choice(list(w.teams))])


async def app_old_subscription(w: World, rng: random.Random) -> str:
    """Stripe changes a team's old subscription: it is canceled, or still active and
    touched (an `updated` event of a subscription the team has left)."""
    olds = [(t, s) for t in w.teams.values() for s in t.old_subscriptions
            if w.fake.subscriptions[s]["status"] == "active"]  # fmt: skip
    if not olds:
        return "app: no old subscription"
    team, sub = rng.choice(olds)
    if rng.random() < 0.5 and w.on("old_subscription_events"):
        updated = w.fake.update_subscription(sub, quantity=rng.randint(3, 6))
        if w._left(team.name, sub) is None:
            item = updated["items"]["data"][0]
            plan = CATALOG.plan_for_price(item["price"]["id"])
            assert plan is not None
            w.happened += 1
            free = CATALOG.plans[plan].free_tokens * item["quantity"]
            team.unseen_moves.append(Grant(w.now, free, sub, order=w.happened))
        return f"Stripe: {team.name}'s old {sub} updated while active"
    w.fake.update_subscription(sub, status="canceled", ended_at=int(w.now.timestamp()))
    return f"Stripe: {team.name}'s old {sub} canceled"


ACTIONS: dict[str, Action] = {
    "advance_clock": advance_clock,
    "app_charge": app_charge,
    "app_seats": app_seats,
    "app_move": app_move,
    "app_old_subscription": app_old_subscription,
    "worker_start_job": worker_start_job,
    "worker_answer": worker_answer,
    "worker_sweep": worker_sweep,
    "reconcile_one": reconcile_one,
    "reconcile_two": reconcile_two,
    "reconcile_busy": reconcile_busy,
    "stripe_collects": stripe_collects,
    "stripe_cards": stripe_cards,
    "stripe_fault": stripe_fault,
    "webhooks_deliver": webhooks_deliver,
    "webhooks_again": webhooks_again,
    "webhooks_burst": webhooks_burst,
    "finance_void": finance_void,
    "finance_uncollectible": finance_uncollectible,
    "finance_draft": finance_draft,
    "finance_reissue": finance_reissue,
    "finance_delete_customer": finance_delete_customer,
}
WEIGHTS: dict[str, int] = {
    "advance_clock": 10,
    "app_charge": 10,
    "app_seats": 2,
    "app_move": 1,
    "app_old_subscription": 2,
    "worker_start_job": 6,
    "worker_answer": 7,
    "worker_sweep": 2,
    "reconcile_one": 6,
    "reconcile_two": 3,
    "reconcile_busy": 4,
    "stripe_collects": 4,
    "stripe_cards": 2,
    "stripe_fault": 4,
    "webhooks_deliver": 8,
    "webhooks_again": 2,
    "webhooks_burst": 1,
    "finance_void": 2,
    "finance_uncollectible": 2,
    "finance_draft": 3,
    "finance_reissue": 2,
    "finance_delete_customer": 1,
}
MID_RUN.extend(["finance_void", "finance_uncollectible", "finance_draft", "stripe_collects",
                "webhooks_deliver", "app_charge", "stripe_cards"])  # fmt: skip


def schedule(seed: int, steps: int) -> list[tuple[int, str]]:
    """(step, action) for a seed: each step's choice from its own generator."""
    names = list(ACTIONS)
    weights = [WEIGHTS[n] for n in names]
    return [(i, random.Random(f"{seed}:{i}:pick").choices(names, weights)[0])
            for i in range(steps)]  # fmt: skip


async def rest(w: World) -> None:
    """Let every actor finish: vendors answer, jobs settle, Stripe collects, every event
    arrives, months end and reconcilers run until nothing changes."""
    for _ in range(6):
        for job in list(w.jobs.values()):
            if job.state == "retry":
                job.task = asyncio.create_task(_job_runs(w, job))
                await asyncio.sleep(0.01)
            if job.state == "running" and not job.gate.is_set():
                job.answer = "valid"
                job.gate.set()
            if job.task is not None:
                await asyncio.wait_for(asyncio.shield(job.task), 10)
    w.fake.clear_faults()
    w.now = max(w.now, month_start(month_index(w.now) + 1)) + HOLD_TTL + timedelta(hours=1)
    w.fake.now = int(w.now.timestamp())
    await worker_sweep(w, random.Random(0))
    for _ in range(3):
        w.now += timedelta(hours=25)
        w.fake.now = int(w.now.timestamp())
        await _reconcile(w, 0)
        w.fake.run_automatic_collection()
        _take(w)
        events, w.pending = w.pending, []
        chunk = len(events) if w.on("webhook_burst_over_pool") else w.api_pool.get_max_size() - 1
        for i in range(0, len(events), max(chunk, 1)):
            await _deliver(w, events[i : i + chunk])
    await _reconcile(w, 1)


async def run(
    make_world: Callable[[], Awaitable[World]],
    seed: int,
    steps: int,
    *,
    skip: frozenset[int] = frozenset(),
) -> World:
    """Run a seed's schedule; raises Violation (with the steps so far in `world.log`)."""
    w = await make_world()
    await w.setup()
    try:
        for i, name in schedule(seed, steps):
            if i in skip:
                continue
            rng = random.Random(f"{seed}:{i}:run")
            try:
                what = await ACTIONS[name](w, rng)
                w.log.append(f"#{i} {name}: {what}")
                await w.check()
                w.checks += 1
            except Violation as v:
                w.log.append(f"#{i} {name}: VIOLATION {v}")
                raise
        await rest(w)
        w.log.append("rest")
        await w.check(at_rest=True, after_reconcile=w.now)
    except Violation as v:
        v.world = w  # type: ignore[attr-defined]
        raise
    finally:
        await w.close()
    return w


def enabled_flags() -> set[str]:
    if os.environ.get("TOKENS_INTERLEAVE_ALL") == "1":
        return set(PENDING_FIXES)
    names = os.environ.get("TOKENS_INTERLEAVE_ENABLE", "")
    return {n.strip() for n in names.split(",") if n.strip()}


async def worker_pool(dsn: str) -> asyncpg.Pool:
    """The worker's pool: a lock wait longer than 200 ms is an error (as a lock
    timeout or a statement timeout in production makes it)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=5,
        server_settings={"timezone": "UTC", "application_name": "tokens-worker",
                         "lock_timeout": "200"},
        connection_class=PooledConnection,
    )  # fmt: skip
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def pools(dsn: str) -> Any:
    main = await create_pool(dsn, max_size=10)
    api = await create_pool(dsn, max_size=5)
    work = await worker_pool(dsn)
    try:
        yield main, api, work
    finally:
        for p in (main, api, work):
            p.terminate()
