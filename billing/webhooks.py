"""Stripe's events in (README "Stripe webhooks"): stored by id, handled once, in any order.

An event says only that something changed; what it changed is read from
Stripe at the time of handling (the subscription, the invoice), so a late or
repeated event can never bring back an older state. Without a Stripe key the
event's own object is used instead.

- `customer.subscription.created|updated|deleted`: the team named by the
  subscription's `metadata.team` gets the plan whose `stripe_prices` has the
  item's price, seats = the item's quantity, the price's interval, anchor =
  `billing_cycle_anchor` and the customer (`Ledger.set_team`: a grant only grows
  mid-month). A canceled subscription ends the team's grants from the next
  billing month on (`teams.subscription_ended_at`, read by the money functions).
  Only the team's current subscription, or a live one created after it, changes
  the team (`follows`): a late event of an older subscription changes nothing,
  and a subscription that ended ends the team only when it is the team's.
- `invoice.paid|payment_failed|voided|marked_uncollectible`: the bill of that
  invoice takes the invoice's current status.

A refusal by the ledger (unknown plan for the price, an anchor conflict) is
the event's stored result, not a retry: Stripe would only send it again.
Stripe or the database being unreachable is raised, and the event stays
unhandled for Stripe's next delivery.

Connections: Stripe is read before any connection is taken, and the handling
then runs in one short transaction on one connection (the event's row lock,
the team's, the ledger's statements). A delivery never holds a connection while
it waits for Stripe or for a second connection, so a burst of deliveries cannot
starve the pool it needs to finish.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import stripe
import structlog

from billing.sender import FINAL_STATUSES
from db.pool import Conn
from db.queries import parse
from ledger import validate
from ledger.errors import AnchorConflict, BadInput, TokensError
from ledger.service import Ledger

log = structlog.get_logger("tokens.billing")

SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)
INVOICE_EVENTS = (
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.marked_uncollectible",
)
ENDED = ("canceled", "incomplete_expired")
NOT_STARTED = ("incomplete",)


@cache
def _sql() -> dict[str, str]:
    return parse(resources.files("billing.sql").joinpath("webhooks.sql").read_text())


def q(name: str) -> str:
    return _sql()[name]


class MalformedEvent(BadInput):
    """A signed event whose object is not what its type says (a quantity that is not a
    number, a list where an object belongs): stored as refused, never retried."""

    code = "malformed_event"


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"{what} must be an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Outcome:
    event_id: str
    type: str
    duplicate: bool
    result: str


def _ts(value: Any) -> datetime | None:
    """A Stripe timestamp (Unix seconds); None when absent or not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _id(value: Any) -> str | None:
    """A Stripe reference, expanded or not."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value else None


class WebhookHandler:
    def __init__(
        self, ledger: Ledger, client: stripe.StripeClient | None, clock: Callable[[], datetime]
    ) -> None:
        self.ledger = ledger
        self.pool = ledger.pool
        self.client = client
        self.clock = clock

    async def receive(self, event: Mapping[str, Any]) -> Outcome:
        """Store the event, and handle it unless it was handled before."""
        event_id, kind = str(event["id"]), str(event["type"])
        obj = event.get("data", {}).get("object", {})
        stored = await self.pool.fetchrow(
            q("record_event"),
            event_id,
            kind,
            _id(obj),
            bool(event.get("livemode", False)),
            _ts(event.get("created")) or self.clock(),
            self.clock(),
            json.dumps(event),
        )
        assert stored is not None
        if stored["handled"]:
            return Outcome(event_id, kind, True, stored["result"])
        current = await self._read(kind, obj)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("lock_event"), event_id)
            assert row is not None
            if row["handled_at"] is not None:  # a concurrent delivery handled it meanwhile
                return Outcome(event_id, kind, True, row["result"])
            result = await self._handle(conn, kind, current)
            await conn.execute(q("event_handled"), event_id, self.clock(), result)
        log.info("stripe_event", event_id=event_id, type=kind, result=result)
        return Outcome(event_id, kind, False, result)

    async def _read(self, kind: str, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        """The event's object as Stripe has it now, for the events Tokens acts on."""
        if kind in SUBSCRIPTION_EVENTS:
            return await self._current("subscriptions", obj)
        if kind in INVOICE_EVENTS:
            return await self._current("invoices", obj)
        return obj

    async def _handle(self, conn: Conn, kind: str, obj: Mapping[str, Any]) -> str:
        try:
            # A savepoint: a refusal undoes the handling, and the event is still marked.
            async with conn.transaction():
                if kind in SUBSCRIPTION_EVENTS:
                    return await self._subscription(conn, obj)
                if kind in INVOICE_EVENTS:
                    return await self._invoice(conn, kind, obj)
        except TokensError as exc:
            log.warning("stripe_event_refused", type=kind, code=exc.code, error=str(exc))
            return f"refused: {exc.code}: {exc}"
        return "ignored: not an event Tokens acts on"

    async def _current(self, resource: str, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        """The object as Stripe has it now (the event's copy without a Stripe key)."""
        obj_id = _id(obj)
        if self.client is None or obj_id is None:
            return obj
        service = getattr(self.client.v1, resource)
        try:
            found = await service.retrieve_async(obj_id)
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise
            return obj  # gone at Stripe: the event's copy is all there is
        current: Mapping[str, Any] = found.to_dict()
        return current

    # -- subscriptions --------------------------------------------------------

    async def _subscription(self, conn: Conn, sub: Mapping[str, Any]) -> str:
        team = _object(sub.get("metadata"), "the subscription's metadata").get("team")
        if not team:
            return "ignored: the subscription has no metadata.team"
        validate.team_id(team)
        sub_id = sub.get("id")
        if not isinstance(sub_id, str) or not sub_id:
            raise MalformedEvent("the subscription has no id")
        status = sub.get("status")
        created = _ts(sub.get("created"))
        now = self.clock()
        await conn.execute(q("lock_team_events"), team)
        row = await conn.fetchrow(q("team_subscription"), team)
        verdict = follows(row, sub_id, created)
        if status in ENDED:
            if row is None:
                return f"ignored: team {team} is unknown"
            # Only the team's own subscription ends it; or any, for a team that never
            # followed one (set up by the app before its subscription's first event).
            never_followed = (
                row["stripe_subscription"] is None and row["subscription_created"] is None
            )
            if verdict != "current" and not never_followed:
                return (
                    f"ignored: subscription {sub_id} ended, but team {team} follows "
                    f"{row['stripe_subscription'] or 'a later term (set by the app)'}"
                )
            ended = _ts(sub.get("ended_at")) or _ts(sub.get("canceled_at")) or now
            await conn.execute(q("end_subscription"), team, sub_id, ended, now, created)
            return f"team {team}: subscription {sub_id} ended at {ended.isoformat()}"
        if status in NOT_STARTED:
            return f"ignored: subscription {sub_id} is {status}"
        if verdict == "older":
            return f"ignored: team {team} follows a subscription created after {sub_id}"
        if verdict == "current" and row is not None and row["subscription_ended_at"] is not None:
            # Stripe never reactivates a canceled subscription: an active copy is stale
            # (the event's own object, without a Stripe key).
            return f"ignored: subscription {sub_id} of team {team} has ended"
        return await self._follow(conn, team, sub, created, now, known=row is not None)

    async def _follow(
        self,
        conn: Conn,
        team: str,
        sub: Mapping[str, Any],
        created: datetime | None,
        now: datetime,
        *,
        known: bool,
    ) -> str:
        """The team follows `sub` (its current subscription, or a newer one)."""
        sub_id = str(sub["id"])
        plan, item = self._plan_item(sub)
        if plan is None or item is None:
            return f"ignored: no catalog plan lists the prices of subscription {sub_id}"
        price = _object(item.get("price"), "a subscription item's price")
        interval = _object(price.get("recurring"), "a price's recurring").get("interval")
        anchor = _ts(sub.get("billing_cycle_anchor"))
        if anchor is None:
            return f"ignored: subscription {sub_id} has no billing_cycle_anchor"
        seats = item.get("quantity") or 0
        if isinstance(seats, bool) or not isinstance(seats, int):
            raise MalformedEvent(
                f"subscription {sub_id}: the item's quantity must be a whole number, "
                f"got {str(seats)[:40]!r}"
            )
        customer = _id(sub.get("customer"))

        async def set_team(anchored: datetime) -> None:
            await self.ledger.set_team(
                team,
                plan=plan,
                seats=seats,
                interval=str(interval),
                anchor=anchored,
                at=now,
                stripe_customer=customer,
                conn=conn,
            )

        if known:  # first, so that a team whose subscription ended is current for set_team
            await conn.execute(q("follow_subscription"), team, sub_id, created)
        kept = ""
        try:
            async with conn.transaction():  # a savepoint: the refused anchor undoes only itself
                await set_team(anchor)
        except AnchorConflict as conflict:
            # A month is already open from where the new anchor would take effect (a
            # clock set ahead): the plan, the seats and the customer must not be lost
            # with the anchor, nor every later event of this subscription.
            current = (await self.ledger.get_team(team, conn)).anchor
            await set_team(current)
            log.warning("webhook_anchor_kept", team=team, stripe_anchor=anchor.isoformat(),
                        kept=current.isoformat(), reason=str(conflict))  # fmt: skip
            kept = f" (anchor {anchor.isoformat()} refused, kept {current.isoformat()})"
            anchor = current
        if not known:
            await conn.execute(q("follow_subscription"), team, sub_id, created)
        return f"team {team}: {plan} x{seats} {interval}ly from {anchor.isoformat()}{kept}"

    def _plan_item(self, sub: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any] | None]:
        items = _object(sub.get("items"), "the subscription's items").get("data") or []
        if not isinstance(items, list):
            raise MalformedEvent("the subscription's items.data must be a list")
        for item in items:
            item = _object(item, "a subscription item")
            price = _id(item.get("price"))
            plan = self.ledger.catalog.plan_for_price(price) if price else None
            if plan is not None:
                return plan, item
        return None, None

    # -- invoices -------------------------------------------------------------

    async def _invoice(self, conn: Conn, kind: str, invoice: Mapping[str, Any]) -> str:
        invoice_id = _id(invoice)
        stripe_status = str(invoice.get("status"))
        news = bill_news(kind, stripe_status)
        if news is None:
            if invoice_id is None or invoice.get("status") is None:
                return "ignored: an invoice event without the invoice's id or status"
            return f"ignored: invoice {invoice_id} is {stripe_status}"
        status, code, message = news
        if status == "paid":
            status, code, message = await self._paid_in_full(conn, invoice_id, invoice)
        row = await conn.fetchrow(
            q("invoice_news"), invoice_id, status, stripe_status, code, message, self.clock()
        )
        if row is not None:
            return f"bill {row['id']}: {status}"
        other = await conn.fetchrow(q("invoice_bill"), invoice_id)
        if other is None:
            return f"ignored: no bill has invoice {invoice_id}"
        if other["status"] != "reissued":
            # A newer reading was written first: this one is stale.
            log.info("stale_invoice_event", bill_id=other["id"], invoice=invoice_id,
                     read=stripe_status, kept=other["status"])  # fmt: skip
            kept = other["status"]
            return f"bill {other['id']} stays {kept}: this reading ({stripe_status}) is older"
        log.warning(
            "reissued_bill_invoice_event", bill_id=other["id"], invoice=invoice_id, status=status
        )
        return f"bill {other['id']} is {other['status']}: its invoice is {stripe_status} at Stripe"

    async def _paid_in_full(
        self, conn: Conn, invoice_id: str | None, invoice: Mapping[str, Any]
    ) -> tuple[str, str | None, str | None]:
        """A paid invoice makes its bill paid only when it totals the bill's amount: an
        empty draft finance finalized is paid at 0 at once, the tokens never charged."""
        bill = await conn.fetchrow(q("invoice_bill"), invoice_id)
        total = invoice.get("total")
        if bill is None or total == bill["amount_cents"]:
            return "paid", None, None
        return (
            "failed",
            "total_mismatch",
            (
                f"invoice {invoice_id} was paid at {total} {bill['currency']} but the bill is "
                f"{bill['amount_cents']}: its tokens are not charged in full; "
                + (
                    f"`tokens bill reissue {bill['id']}` bills them on a new invoice"
                    if not total
                    else "settle the difference in Stripe by hand (a reissue would bill every "
                    "token again)"
                )
            ),
        )


def follows(row: Mapping[str, Any] | None, sub_id: str, created: datetime | None) -> str:
    """How subscription `sub_id` (created at Stripe at `created`) stands to its team, whose
    `row` says which subscription it follows: "new" (no such team yet), "current",
    "newer" (created after the team's current one, or the team follows none or one of
    unknown age) or "older" (created before or with it: the team has moved on)."""
    if row is None:
        return "new"
    if row["stripe_subscription"] == sub_id:
        return "current"
    mark = row["subscription_created"]
    if mark is None or (created is not None and created > mark):
        return "newer"
    return "older"


def bill_news(kind: str, stripe_status: str) -> tuple[str, str | None, str | None] | None:
    """(the bill's status, error code, message) for its invoice in `stripe_status`, reached
    by event `kind`; None when the event changes nothing (an open invoice but for a failed
    payment, a draft). Final statuses map as the sender maps them."""
    final = FINAL_STATUSES.get(stripe_status)
    if final == "void":
        return final, "invoice_void", "the invoice was voided at Stripe"
    if final == "uncollectible":
        return final, "invoice_uncollectible", "the invoice was marked uncollectible at Stripe"
    if final is not None:
        return final, None, None
    if stripe_status == "open" and kind == "invoice.payment_failed":
        return "payment_failed", "payment_failed", "a payment of the invoice failed at Stripe"
    return None
