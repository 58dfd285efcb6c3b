"""Stripe webhooks (README "Stripe webhooks"): signatures, handled once, any delivery order."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import stripe
from arq.connections import ArqRedis

from api.app import create_app
from billing.reconcile import bill_status, reconcile, team_bills
from billing.sender import StripeSender
from ledger.catalog import DEFAULT_CATALOG, Catalog, Plan
from ledger.errors import UnknownTeam
from ledger.service import Ledger
from testing.stripe import StripeFake
from tests.api_helpers import WEBHOOK_SECRET, arq_redis, bearer, services_for, settings_for
from tests.clock import FrozenClock, at, epoch
from tests.factories import make_team

CATALOG = Catalog(
    actions=DEFAULT_CATALOG.actions,
    plans={
        "trial": DEFAULT_CATALOG.plans["trial"],
        "email_outreach": Plan(free_tokens=250, stripe_prices=("price_eo_m", "price_eo_y")),
        "sales_engagement": Plan(free_tokens=500, stripe_prices=("price_se_m",)),
    },
)
MAR_1 = epoch("2026-03-01")
_ids = itertools.count()


@pytest.fixture
async def priced(pool: asyncpg.Pool) -> AsyncIterator[Ledger]:
    ledger = Ledger(pool, CATALOG)
    await ledger.sync_catalog()
    yield ledger
    assert await ledger.drift() == []


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(at("2026-03-10T12:00:00"))


@pytest.fixture
async def hooks(
    priced: Ledger,
    arq_redis: ArqRedis,
    stripe_fake: StripeFake,
    clock: FrozenClock,
    database_url: str,
    redis_url: str,
) -> AsyncIterator[httpx.AsyncClient]:
    svc = services_for(
        priced,
        arq_redis,
        settings_for(database_url, redis_url),
        clock=clock,
        stripe=stripe_fake.client(),
    )
    app = create_app(svc.settings, svc)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as c:
        yield c


def event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{next(_ids)}_{time.time_ns()}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }


def signed(payload: str, secret: str = WEBHOOK_SECRET, at_s: int | None = None) -> str:
    t = at_s if at_s is not None else int(time.time())
    sig = stripe.WebhookSignature._compute_signature(f"{t}.{payload}", secret)
    return f"t={t},v1={sig}"


async def deliver(
    client: httpx.AsyncClient, evt: dict[str, Any], header: str | None = "sign"
) -> httpx.Response:
    payload = json.dumps(evt)
    headers = {"Content-Type": "application/json"}
    if header == "sign":
        headers["Stripe-Signature"] = signed(payload)
    elif header is not None:
        headers["Stripe-Signature"] = header
    return await client.post("/v1/stripe/webhook", content=payload, headers=headers)


async def stored(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM stripe_events ORDER BY received_at, id")


async def test_a_bad_or_missing_signature_is_400_and_stores_nothing(
    hooks: httpx.AsyncClient, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    cus = stripe_fake.add_customer()
    sub = stripe_fake.add_subscription(cus, team="acme", price="price_eo_m", anchor=MAR_1)
    evt = event("customer.subscription.created", sub)
    payload = json.dumps(evt)
    cases = {
        "missing": None,
        "wrong secret": signed(payload, "whsec_not_ours"),
        "too old": signed(payload, at_s=int(time.time()) - 3600),
        "garbage": "t=abc,v1=zzz",
        "other payload": signed(payload.replace("acme", "evil")),
    }
    for name, header in cases.items():
        response = await deliver(hooks, evt, header)
        assert response.status_code == 400, name
        assert response.json()["error"]["code"] == "bad_signature", name
    assert await stored(pool) == []
    assert stripe_fake.calls("GET /v1/subscriptions/*") == []
    ok = await deliver(hooks, evt)
    assert ok.status_code == 200 and len(await stored(pool)) == 1


async def test_subscription_syncs_plan_seats_interval_anchor_customer(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, clock: FrozenClock
) -> None:
    cus = stripe_fake.add_customer()
    sub = stripe_fake.add_subscription(
        cus, team="acme", price="price_se_m", quantity=3, anchor=MAR_1
    )
    response = await deliver(hooks, event("customer.subscription.created", sub))
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is False
    team = await priced.get_team("acme")
    assert (team.plan, team.seats, team.billing_interval) == ("sales_engagement", 3, "month")
    assert (team.anchor, team.stripe_customer, team.stripe_subscription) == (
        at("2026-03-01"),
        cus,
        sub["id"],
    )
    assert (await priced.billing("acme", at=clock())).free_granted == 1500
    yearly = stripe_fake.add_subscription(
        cus, team="yco", price="price_eo_y", quantity=2, interval="year", anchor=MAR_1
    )
    await deliver(hooks, event("customer.subscription.created", yearly))
    assert (await priced.get_team("yco")).billing_interval == "year"
    unknown = stripe_fake.add_subscription(cus, team="zco", price="price_other", anchor=MAR_1)
    ignored = await deliver(hooks, event("customer.subscription.created", unknown))
    assert ignored.json()["result"].startswith("ignored: no catalog plan")


async def test_a_late_subscription_event_moves_the_anchor_from_its_arrival(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, clock: FrozenClock
) -> None:
    # A trial from Mar 5; Stripe's subscription is anchored Mar 1, its event arrives Mar 10.
    await make_team(priced, plan="trial", anchor="2026-03-05")
    await priced.charge("acme", "ai_icebreaker", 3, key="trial", at=at("2026-03-06"))
    cus = stripe_fake.add_customer()
    sub = stripe_fake.add_subscription(
        cus, team="acme", price="price_se_m", quantity=3, anchor=MAR_1
    )
    response = await deliver(hooks, event("customer.subscription.created", sub))
    assert response.status_code == 200 and response.json()["result"].startswith("team acme: "), (
        response.text
    )
    team = await priced.get_team("acme")
    assert (team.plan, team.seats, team.stripe_customer) == ("sales_engagement", 3, cus)
    trial = await priced.billing("acme", at=at("2026-03-06"))
    assert (trial.period_start, trial.period_end, trial.free_spent) == (
        at("2026-03-05"), clock(), 30,
    )  # fmt: skip
    paid = await priced.billing("acme", at=clock())
    assert (paid.period_start, paid.period_end) == (clock(), at("2026-04-01"))
    assert (paid.plan, paid.free_granted, paid.free_spent) == ("sales_engagement", 1500, 0)


async def test_a_conflicting_anchor_keeps_the_plan_seats_and_customer(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, clock: FrozenClock
) -> None:
    await make_team(priced, anchor="2026-02-20")
    await priced.billing("acme", at=at("2026-04-25"))  # a month opened ahead: Apr 20 - May 20
    cus = stripe_fake.add_customer()
    sub = stripe_fake.add_subscription(
        cus, team="acme", price="price_se_m", quantity=4, anchor=MAR_1
    )
    response = await deliver(hooks, event("customer.subscription.created", sub))
    assert response.status_code == 200
    assert "refused, kept 2026-02-20" in response.json()["result"]
    team = await priced.get_team("acme")
    assert (team.plan, team.seats, team.stripe_customer, team.stripe_subscription) == (
        "sales_engagement", 4, cus, sub["id"],
    )  # fmt: skip
    assert team.anchor == at("2026-02-20")
    assert (await priced.billing("acme", at=clock())).free_granted == 2000  # 4 seats, at once


async def test_a_duplicate_is_stored_once_and_handled_once(
    hooks: httpx.AsyncClient, pool: asyncpg.Pool, stripe_fake: StripeFake
) -> None:
    cus = stripe_fake.add_customer()
    sub = stripe_fake.add_subscription(cus, team="acme", price="price_eo_m", anchor=MAR_1)
    evt = event("customer.subscription.created", sub)
    first, second = await deliver(hooks, evt), await deliver(hooks, evt)
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert second.json()["result"] == first.json()["result"]
    # Two deliveries at the same moment: one handles it, the other waits and sees it handled.
    evt2 = event("customer.subscription.updated", sub)
    both = await asyncio.gather(deliver(hooks, evt2), deliver(hooks, evt2))
    assert sorted(r.json()["duplicate"] for r in both) == [False, True]
    rows = await stored(pool)
    assert [(r["type"], r["deliveries"]) for r in rows] == [
        ("customer.subscription.created", 2),
        ("customer.subscription.updated", 2),
    ]
    assert all(r["handled_at"] is not None for r in rows)
    # Stripe is read before a connection is taken: two deliveries at the same moment
    # may both read it, and only one of them handles the event.
    assert 2 <= len(stripe_fake.calls("GET /v1/subscriptions/*")) <= 3


async def test_out_of_order_events_apply_the_current_state(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake
) -> None:
    cus = stripe_fake.add_customer()
    sub = stripe_fake.add_subscription(
        cus, team="acme", price="price_eo_m", quantity=2, anchor=MAR_1
    )
    created = event("customer.subscription.created", sub)
    updated = event(
        "customer.subscription.updated", stripe_fake.update_subscription(sub["id"], quantity=5)
    )
    await deliver(hooks, updated)
    await deliver(hooks, created)  # older, delivered later: it says 2 seats, Stripe says 5
    assert (await priced.get_team("acme")).seats == 5
    deleted = event(
        "customer.subscription.deleted",
        stripe_fake.update_subscription(sub["id"], status="canceled", ended_at=MAR_1 + 86400 * 14),
    )
    await deliver(hooks, deleted)
    await deliver(hooks, event("customer.subscription.updated", {**sub, "status": "active"}))
    team = await priced.get_team("acme")
    assert team.subscription_ended_at == at("2026-03-15")  # a late update does not revive it


async def test_a_deleted_subscription_stops_the_next_months_grants(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, clock: FrozenClock
) -> None:
    cus = stripe_fake.add_customer()
    sub = stripe_fake.add_subscription(cus, team="acme", price="price_eo_m", anchor=MAR_1)
    await deliver(hooks, event("customer.subscription.created", sub))
    await priced.set_limit("acme", 1000, actor="ann", role="admin", at=clock())
    held, _ = await priced.charge("acme", "ai_sequence", 6, key="march", at=clock())  # 250 + 50
    assert held.additional_tokens == 50
    clock.now = at("2026-03-15")
    ended = stripe_fake.update_subscription(sub["id"], status="canceled", ended_at=epoch(clock.now))
    await deliver(hooks, event("customer.subscription.deleted", ended))
    # The month it ended in keeps its grant and its limit...
    march = await priced.billing("acme", at=at("2026-03-20"))
    assert (march.free_granted, march.additional_limit) == (250, 1000)
    # ...the next ones grant nothing and allow no additional tokens.
    april = await priced.billing("acme", at=at("2026-04-05"))
    assert (april.free_granted, april.additional_limit, april.additional_available) == (0, 0, 0)
    refused, _ = await priced.charge("acme", "debounce", 1, key="april", at=at("2026-04-05"))
    assert refused.refused
    # What it spent is still billed.
    sender = StripeSender(priced.pool, stripe_fake.client(), lambda: datetime.now(UTC))
    report = await reconcile(priced.pool, sender, team="acme", at=at("2026-04-02"))
    # (finalized: Stripe's automatic collection pays it, about an hour later)
    assert [(b.tokens, bill_status(b)) for b in report.bills] == [(50, "open")]


async def test_invoice_events_update_their_bill_by_the_invoice_state(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, clock: FrozenClock
) -> None:
    cus = stripe_fake.add_customer(card_declines="insufficient_funds")
    await make_team(priced, anchor="2026-03-01", at=clock(), limit=1000, stripe_customer=cus)
    await priced.charge("acme", "ai_sequence", 6, key="k", at=clock())  # 50 additional
    sender = StripeSender(priced.pool, stripe_fake.client(), lambda: datetime.now(UTC))
    await reconcile(priced.pool, sender, team="acme", at=at("2026-04-02"))
    [bill] = await team_bills(priced.pool, "acme")
    assert bill.stripe_invoice_id is not None and bill.step == "finalized"
    invoice = stripe_fake.invoices[bill.stripe_invoice_id]
    assert invoice["status"] == "open"
    failed = event("invoice.payment_failed", dict(invoice))
    response = await deliver(hooks, failed)
    assert response.json()["result"] == f"bill {bill.id}: payment_failed"
    [bill] = await team_bills(priced.pool, "acme")
    assert (bill.status, bill.error_code, bill.stripe_invoice_status) == (
        "payment_failed",
        "payment_failed",
        "open",
    )
    # Stripe's own retry collects it; then a late copy of the failure arrives.
    stripe_fake.set_card_declines(cus, False)
    stripe_fake.run_automatic_collection()
    assert invoice["status"] == "paid"
    paid = await deliver(hooks, event("invoice.paid", dict(invoice)))
    assert paid.json()["result"] == f"bill {bill.id}: paid"
    late = await deliver(hooks, event("invoice.payment_failed", {**invoice, "status": "open"}))
    assert late.json()["result"] == f"bill {bill.id}: paid"
    [bill] = await team_bills(priced.pool, "acme")
    assert (bill.step, bill_status(bill), bill.error_code) == ("paid", "paid", None)


async def test_a_voided_invoice_is_kept_on_its_bill(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, clock: FrozenClock
) -> None:
    cus = stripe_fake.add_customer(card_declines=True)
    await make_team(priced, anchor="2026-03-01", at=clock(), limit=1000, stripe_customer=cus)
    await priced.charge("acme", "ai_sequence", 6, key="k", at=clock())
    sender = StripeSender(priced.pool, stripe_fake.client(), lambda: datetime.now(UTC))
    await reconcile(priced.pool, sender, team="acme", at=at("2026-04-02"))
    [bill] = await team_bills(priced.pool, "acme")
    assert bill.stripe_invoice_id is not None
    await stripe_fake.client().v1.invoices.void_invoice_async(bill.stripe_invoice_id)
    voided = await deliver(hooks, event("invoice.voided", {"id": bill.stripe_invoice_id}))
    assert voided.json()["result"] == f"bill {bill.id}: void"
    [bill] = await team_bills(priced.pool, "acme")
    assert (bill.status, bill.stripe_invoice_status, bill.error_code) == (
        "void",
        "void",
        "invoice_void",
    )
    other = await deliver(hooks, event("invoice.paid", {"id": "in_not_ours", "status": "paid"}))
    assert other.json()["result"].startswith("ignored")


async def test_a_new_subscription_makes_an_ended_team_current_again(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, clock: FrozenClock
) -> None:
    cus = stripe_fake.add_customer()
    old = stripe_fake.add_subscription(
        cus, team="acme", price="price_eo_m", anchor=MAR_1, created=MAR_1
    )
    await deliver(hooks, event("customer.subscription.created", old))
    clock.now = at("2026-03-15")
    ended = stripe_fake.update_subscription(old["id"], status="canceled", ended_at=epoch(clock.now))
    deleted = event("customer.subscription.deleted", ended)
    await deliver(hooks, deleted)
    assert (await priced.billing("acme", at=at("2026-04-10"))).free_granted == 0
    clock.now = at("2026-04-10")
    new = stripe_fake.add_subscription(
        cus,
        team="acme",
        price="price_se_m",
        anchor=epoch(clock.now),
        created=epoch(clock.now),
    )
    await deliver(hooks, event("customer.subscription.created", new))
    # A late copy of the old subscription's end does not end the new one.
    await deliver(hooks, {**deleted, "id": deleted["id"] + "_again"})
    team = await priced.get_team("acme")
    assert (team.stripe_subscription, team.subscription_ended_at) == (new["id"], None)
    section = await priced.billing("acme", at=at("2026-04-11"))
    assert (section.plan, section.period_start, section.free_granted) == (
        "sales_engagement",
        at("2026-04-10"),
        500,
    )


async def test_without_a_stripe_key_the_events_object_is_used(
    priced: Ledger, arq_redis: ArqRedis, database_url: str, redis_url: str, clock: FrozenClock
) -> None:
    svc = services_for(priced, arq_redis, settings_for(database_url, redis_url), clock=clock)
    app = create_app(svc.settings, svc)
    sub = StripeFake().add_subscription(
        "cus_x", team="acme", price="price_eo_m", quantity=4, anchor=MAR_1
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as c:
        response = await deliver(c, event("customer.subscription.created", sub))
    assert response.status_code == 200, response.text
    team = await priced.get_team("acme")
    assert (team.seats, team.stripe_customer) == (4, "cus_x")


async def test_a_malformed_signed_event_is_a_stored_refusal_never_a_500(
    priced: Ledger,
    arq_redis: ArqRedis,
    database_url: str,
    redis_url: str,
    clock: FrozenClock,
    pool: asyncpg.Pool,
) -> None:
    svc = services_for(priced, arq_redis, settings_for(database_url, redis_url), clock=clock)
    app = create_app(svc.settings, svc)
    sub = StripeFake().add_subscription("cus_x", team="acme", price="price_eo_m", anchor=MAR_1)
    item = sub["items"]["data"][0]
    malformed = {
        "quantity a string": sub | {"items": {"data": [item | {"quantity": "three"}]}},
        "quantity a bool": sub | {"items": {"data": [item | {"quantity": True}]}},
        "metadata a list": sub | {"metadata": ["team", "acme"]},
        "team a number": sub | {"metadata": {"team": 7}},
        "team with a newline": sub | {"metadata": {"team": "acme\n"}},
        "items a string": sub | {"items": "none"},
        "an item a string": sub | {"items": {"data": ["si_1"]}},
        "price a list": sub | {"items": {"data": [item | {"price": ["price_eo_m"]}]}},
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as c:
        for name, obj in malformed.items():
            evt = event("customer.subscription.updated", obj)
            response = await deliver(c, evt)
            assert response.status_code == 200, (name, response.text)
            result = response.json()["result"]
            assert result.startswith(("refused: ", "ignored: ")), (name, result)
            if "quantity" in name:
                assert "malformed_event" in result and "whole number" in result, result
            row = await pool.fetchrow("SELECT * FROM stripe_events WHERE id = $1", evt["id"])
            assert (row["handled_at"] is not None, row["result"]) == (True, result), name
        # Ids are bounded: too long is a 400, and nothing is stored.
        long_id = event("customer.subscription.updated", sub, event_id="evt_" + "x" * 300)
        too_long = await deliver(c, long_id)
        long_object = event("customer.subscription.updated", sub | {"id": "sub_" + "y" * 300})
        too_long_object = await deliver(c, long_object)
    assert too_long.status_code == too_long_object.status_code == 400
    assert too_long.json()["error"]["code"] == "bad_event"
    assert await pool.fetchval("SELECT max(length(id)) FROM stripe_events") < 100
    assert len(await stored(pool)) == len(malformed)
    with pytest.raises(UnknownTeam):
        await priced.get_team("acme")


async def test_a_late_event_of_an_older_subscription_changes_nothing(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, clock: FrozenClock
) -> None:
    cus = stripe_fake.add_customer()
    old = stripe_fake.add_subscription(
        cus, team="acme", price="price_eo_m", quantity=2, anchor=MAR_1, created=MAR_1
    )
    await deliver(hooks, event("customer.subscription.created", old))
    # The team moves to a newer subscription B, anchored (and created) Mar 10.
    new = stripe_fake.add_subscription(
        cus, team="acme", price="price_se_m", quantity=2,
        anchor=epoch("2026-03-10"), created=epoch("2026-03-10"),
    )  # fmt: skip
    moved = await deliver(hooks, event("customer.subscription.created", new))
    assert moved.json()["result"].startswith("team acme: sales_engagement x2"), moved.text
    clock.now = at("2026-03-12")
    await priced.charge("acme", "ai_sequence", 1, key="k", at=clock())
    before = await priced.billing("acme", at=clock())
    assert (before.period_start, before.free_granted, before.free_spent) == (
        at("2026-03-10"), 1000, 50,
    )  # fmt: skip
    # A is still active at Stripe; a late update of it (5 seats) arrives.
    late = event(
        "customer.subscription.updated", stripe_fake.update_subscription(old["id"], quantity=5)
    )
    ignored = await deliver(hooks, late)
    assert ignored.json()["result"] == (
        f"ignored: team acme follows a subscription created after {old['id']}"
    )
    team = await priced.get_team("acme")
    assert (team.plan, team.seats, team.anchor, team.stripe_subscription) == (
        "sales_engagement", 2, at("2026-03-10"), new["id"],
    )  # fmt: skip
    after = await priced.billing("acme", at=clock())
    assert (after.period_start, after.period_end, after.free_granted, after.free_spent) == (
        at("2026-03-10"), at("2026-04-10"), 1000, 50,
    )  # fmt: skip
    # A's cancellation does not end the team: B is active and paid.
    gone = stripe_fake.update_subscription(
        old["id"], status="canceled", ended_at=epoch("2026-03-13")
    )
    await deliver(hooks, event("customer.subscription.deleted", gone))
    team = await priced.get_team("acme")
    assert (team.stripe_subscription, team.subscription_ended_at) == (new["id"], None)
    assert (await priced.billing("acme", at=at("2026-04-12"))).free_granted == 1000
    # B's own events still apply; a subscription created after B takes over.
    await deliver(
        hooks,
        event(
            "customer.subscription.updated", stripe_fake.update_subscription(new["id"], quantity=3)
        ),
    )
    assert (await priced.get_team("acme")).seats == 3
    newest = stripe_fake.add_subscription(
        cus, team="acme", price="price_eo_m", quantity=4,
        anchor=epoch("2026-03-10"), created=epoch("2026-03-14"),
    )  # fmt: skip
    await deliver(hooks, event("customer.subscription.created", newest))
    team = await priced.get_team("acme")
    assert (team.plan, team.seats, team.stripe_subscription) == (
        "email_outreach", 4, newest["id"],
    )  # fmt: skip


async def test_a_newer_subscription_that_never_ran_does_not_end_the_team(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake
) -> None:
    cus = stripe_fake.add_customer()
    current = stripe_fake.add_subscription(
        cus, team="acme", price="price_eo_m", anchor=MAR_1, created=MAR_1
    )
    await deliver(hooks, event("customer.subscription.created", current))
    # An upgrade whose first payment failed: Stripe expires it after 23 hours.
    upgrade = stripe_fake.add_subscription(
        cus, team="acme", price="price_se_m", anchor=epoch("2026-03-05"),
        created=epoch("2026-03-05"), status="incomplete_expired",
    )  # fmt: skip
    response = await deliver(hooks, event("customer.subscription.updated", upgrade))
    assert response.json()["result"].startswith("ignored: subscription"), response.text
    team = await priced.get_team("acme")
    assert (team.plan, team.stripe_subscription, team.subscription_ended_at) == (
        "email_outreach", current["id"], None,
    )  # fmt: skip


async def test_without_a_stripe_key_a_late_active_copy_does_not_revive_an_ended_team(
    priced: Ledger, arq_redis: ArqRedis, database_url: str, redis_url: str, clock: FrozenClock
) -> None:
    svc = services_for(priced, arq_redis, settings_for(database_url, redis_url), clock=clock)
    app = create_app(svc.settings, svc)
    fake = StripeFake()
    sub = fake.add_subscription("cus_x", team="acme", price="price_eo_m", anchor=MAR_1)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as c:
        await deliver(c, event("customer.subscription.created", sub))
        ended = fake.update_subscription(sub["id"], status="canceled", ended_at=epoch("2026-03-15"))
        await deliver(c, event("customer.subscription.deleted", ended))
        stale = await deliver(c, event("customer.subscription.updated", sub))  # active, older
    assert stale.json()["result"] == f"ignored: subscription {sub['id']} of team acme has ended"
    assert (await priced.get_team("acme")).subscription_ended_at == at("2026-03-15")


async def test_a_team_set_of_the_same_term_keeps_the_subscription_ended(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, clock: FrozenClock
) -> None:
    cus = stripe_fake.add_customer()
    sub = stripe_fake.add_subscription(
        cus, team="acme", price="price_eo_m", quantity=2, anchor=MAR_1, created=MAR_1
    )
    await deliver(hooks, event("customer.subscription.created", sub))
    ended = stripe_fake.update_subscription(
        sub["id"], status="canceled", ended_at=epoch("2026-03-15")
    )
    await deliver(hooks, event("customer.subscription.deleted", ended))
    # The app re-sends the team (one seat more, same anchor) in April, after the end.
    clock.now = at("2026-04-05")
    body = {"plan": "email_outreach", "seats": 3, "interval": "month", "anchor": "2026-03-01"}
    put = await hooks.put("/v1/teams/acme", json=body, headers=bearer("service", None))
    assert put.status_code == 200, put.text
    assert put.json()["free_granted"] == 0
    team = await priced.get_team("acme")
    assert (team.seats, team.subscription_ended_at, team.stripe_subscription) == (
        3, at("2026-03-15"), sub["id"],
    )  # fmt: skip
    april = await priced.billing("acme", at=clock())
    assert (april.free_granted, april.additional_limit) == (0, 0)
    assert (await priced.charge("acme", "debounce", 1, key="a", at=clock()))[0].refused
    # A new anchor is a new term: the team is current again from it, and the ended
    # subscription's late events no longer touch it.
    body["anchor"] = "2026-04-05"
    put = await hooks.put("/v1/teams/acme", json=body, headers=bearer("service", None))
    assert put.json()["free_granted"] == 750, put.text
    team = await priced.get_team("acme")
    assert (team.subscription_ended_at, team.stripe_subscription) == (None, None)
    late = await deliver(hooks, event("customer.subscription.updated", ended))
    assert late.json()["result"].startswith("ignored: subscription"), late.text
    assert (await priced.get_team("acme")).subscription_ended_at is None
    assert (await priced.billing("acme", at=at("2026-05-06"))).free_granted == 750


async def test_the_current_subscriptions_created_is_backfilled_from_its_events(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake, pool: asyncpg.Pool
) -> None:
    cus = stripe_fake.add_customer()
    sub = stripe_fake.add_subscription(
        cus, team="acme", price="price_eo_m", anchor=MAR_1, created=MAR_1 - 3600
    )
    await deliver(hooks, event("customer.subscription.created", sub))
    await pool.execute("UPDATE teams SET subscription_created = NULL")  # as before migration 0006
    sql = (Path(__file__).parents[2] / "db/migrations/0006_subscription_order.sql").read_text()
    await pool.execute(sql[sql.index("UPDATE teams") :])
    team = await pool.fetchrow("SELECT stripe_subscription, subscription_created FROM teams")
    assert tuple(team) == (sub["id"], at("2026-02-28T23:00:00"))


async def test_a_new_subscriptions_creation_and_the_old_ones_end_at_once_leave_the_team_on_the_new(
    hooks: httpx.AsyncClient, priced: Ledger, stripe_fake: StripeFake
) -> None:
    # A team moves to a new subscription and its old one ends: the two events are
    # delivered at the same moment (a dozen teams, so that they meet mid-handling).
    teams = [f"team{i}" for i in range(12)]
    olds, news = {}, {}
    for team in teams:
        cus = stripe_fake.add_customer()
        olds[team] = stripe_fake.add_subscription(
            cus, team=team, price="price_eo_m", anchor=MAR_1, created=MAR_1
        )
        assert (await deliver(hooks, event("customer.subscription.created", olds[team]))).is_success
        news[team] = stripe_fake.add_subscription(
            cus, team=team, price="price_se_m", quantity=2, anchor=MAR_1, created=MAR_1 + 60
        )
        stripe_fake.update_subscription(olds[team]["id"], status="canceled", ended_at=MAR_1 + 60)
    for team in teams:  # each team's two deliveries at the same moment
        both = await asyncio.gather(
            deliver(hooks, event("customer.subscription.created", news[team])),
            deliver(hooks, event("customer.subscription.deleted", olds[team])),
        )
        assert [r.status_code for r in both] == [200, 200], [r.text[:200] for r in both]
    for team in teams:
        row = await priced.get_team(team)
        assert (row.stripe_subscription, row.plan, row.subscription_ended_at) == (
            news[team]["id"],
            "sales_engagement",
            None,
        ), team
