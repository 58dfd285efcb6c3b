"""Subscriptions, read-only over the API: the webhook handler reads a subscription's
current state; tests shape them with ``add_subscription`` / ``update_subscription``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testing.stripe.errors import _no_such
from testing.stripe.invoice_states import InvoiceStates
from testing.stripe.params import _check_known, _clone
from testing.stripe.shapes import Json

_ENDED_SUBSCRIPTIONS = ("canceled", "incomplete_expired")


class Subscriptions(InvoiceStates):
    """``GET /v1/subscriptions/{id}`` and the events of a subscription's changes."""

    def _subscription_routes(self, seg: str) -> list[tuple[str, str, str, Callable[..., Json]]]:
        return [
            ("GET", f"/v1/subscriptions/{seg}", "retrieve_subscription", self._retrieve_sub),
        ]

    def add_subscription(
        self,
        customer: str,
        *,
        team: str,
        price: str,
        quantity: int = 1,
        interval: str = "month",
        anchor: int | None = None,
        status: str = "active",
        created: int | None = None,
    ) -> Json:
        """A subscription of `team` (metadata.team), `created` now unless told (Stripe's
        `created` is in seconds: two made in one second have the same one)."""
        now = self._now() if created is None else created
        sub_id = self._new_id("sub_")
        sub: Json = {
            "id": sub_id,
            "object": "subscription",
            "customer": customer,
            "status": status,
            "billing_cycle_anchor": anchor if anchor is not None else now,
            "created": now,
            "start_date": now,
            "canceled_at": None,
            "ended_at": None,
            "cancel_at_period_end": False,
            "livemode": False,
            "metadata": {"team": team},
            "items": {
                "object": "list",
                "url": f"/v1/subscription_items?subscription={sub_id}",
                "has_more": False,
                "data": [
                    {
                        "id": self._new_id("si_"),
                        "object": "subscription_item",
                        "subscription": sub_id,
                        "quantity": quantity,
                        "price": {
                            "id": price,
                            "object": "price",
                            "currency": "usd",
                            "type": "recurring",
                            "recurring": {"interval": interval, "interval_count": 1},
                        },
                    }
                ],
            },
        }
        self.subscriptions[sub_id] = sub
        self._emit("customer.subscription.created", sub)
        return _clone(sub)

    def delete_customer(self, customer: str) -> None:
        """Finance deletes the customer. Stripe "also immediately cancels any active
        subscriptions on the customer" (API reference, Delete a customer) and sends
        ``customer.deleted``; it documents nothing done to the customer's invoices, so an
        open one stays open, with nobody left to pay it. Retrieved (or expanded) since,
        the customer is ``{"id", "object", "deleted": true}``."""
        snapshot = _clone(self.customers[customer])
        for sub in list(self.subscriptions.values()):
            if sub["customer"] == customer and sub["status"] not in _ENDED_SUBSCRIPTIONS:
                self.update_subscription(sub["id"], status="canceled")
        self.customers[customer] = {"id": customer, "object": "customer", "deleted": True}
        if not snapshot.get("deleted"):
            self._emit("customer.deleted", snapshot)

    def update_subscription(
        self,
        sub_id: str,
        *,
        quantity: int | None = None,
        price: str | None = None,
        status: str | None = None,
        ended_at: int | None = None,
    ) -> Json:
        sub = self.subscriptions[sub_id]
        item = sub["items"]["data"][0]
        if quantity is not None:
            item["quantity"] = quantity
        if price is not None:
            item["price"]["id"] = price
        if status is not None:
            sub["status"] = status
        if status == "canceled":
            sub["canceled_at"] = sub["ended_at"] = ended_at if ended_at else self._now()
        kind = "deleted" if sub["status"] in ("canceled", "incomplete_expired") else "updated"
        self._emit(f"customer.subscription.{kind}", sub)
        return _clone(sub)

    def _retrieve_sub(self, params: dict[str, Any], sub_id: str) -> Json:
        _check_known(params, ("expand",))
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            raise _no_such("subscription", sub_id, "id", 404)
        return _clone(sub)
