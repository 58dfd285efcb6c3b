"""Events as Stripe sends them to a webhook endpoint: every invoice status change
(``invoice.finalized|paid|payment_failed|voided|marked_uncollectible``),
subscription change (``customer.subscription.*``) and customer deletion
(``customer.deleted``, its subscriptions canceled with it) is appended to ``events``
with a snapshot of the object; ``take_events`` hands out the new ones.
"""

from __future__ import annotations

from testing.stripe.params import _clone
from testing.stripe.shapes import API_VERSION, Json
from testing.stripe.store import Store


class Events(Store):
    """The events Stripe would send, oldest first."""

    def take_events(self) -> list[Json]:
        """The events emitted since the last call (each also stays in ``events``)."""
        start = getattr(self, "_events_taken", 0)
        self._events_taken = len(self.events)
        return [_clone(e) for e in self.events[start:]]

    def _emit(self, kind: str, obj: Json) -> None:
        """An event as Stripe sends it: a snapshot of the object when it happened."""
        self.moment += 1
        if obj.get("object") == "invoice":
            self._status_moment[obj["id"]] = self.moment
            snapshot = _clone(obj)
            snapshot["lines"]["data"] = snapshot["lines"]["data"][:10]
        else:
            snapshot = _clone(obj)
        self.events.append(
            {
                # Not from the id generator: a seeded fake's other ids stay as they were.
                "id": f"evt_{len(self.events) + 1:024d}",
                "object": "event",
                "api_version": API_VERSION,
                "type": kind,
                "created": self._now(),
                "livemode": False,
                "pending_webhooks": 1,
                "data": {"object": snapshot},
            }
        )
