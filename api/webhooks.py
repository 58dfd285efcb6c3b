"""POST /v1/stripe/webhook: Stripe's signature instead of a JWT (README "Stripe webhooks")."""

from __future__ import annotations

import json
from typing import Annotated

import stripe
from fastapi import APIRouter, Header, Request

from api.deps import Svc, documented
from api.errors import ApiError
from api.schemas import WebhookOut
from billing.webhooks import WebhookHandler

router = APIRouter(tags=["stripe"])

TOLERANCE_S = 300  # Stripe's default: a signed request older than 5 minutes is refused
# Stripe's ids are a few dozen characters; these bounds keep what is stored and logged small.
MAX_ID = 255
MAX_TYPE = 100


def _short_text(value: object, longest: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= longest and value.isprintable()


def _check_event(event: object) -> None:
    """400 unless the payload has an event's shape: an id, a type and data.object, the ids
    short printable text. What the object holds is the handler's to judge (a stored
    refusal)."""
    if not isinstance(event, dict) or not _short_text(event.get("id"), MAX_ID):
        raise ApiError(
            400, "bad_event", f"the payload is not a Stripe event (an id of 1-{MAX_ID} characters)"
        )
    if not _short_text(event.get("type"), MAX_TYPE) or not isinstance(event.get("data"), dict):
        raise ApiError(400, "bad_event", "the payload is not a Stripe event (a type and data)")
    obj = event["data"].get("object")
    if not isinstance(obj, dict):
        raise ApiError(400, "bad_event", "the event has no data.object")
    if "id" in obj and not _short_text(obj["id"], MAX_ID):
        raise ApiError(400, "bad_event", f"data.object.id must be 1-{MAX_ID} characters")


@router.post(
    "/v1/stripe/webhook",
    responses=documented(400, 413, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def stripe_webhook(
    request: Request,
    svc: Svc,
    stripe_signature: Annotated[str | None, Header()] = None,
) -> WebhookOut:
    """A Stripe event, verified with STRIPE_WEBHOOK_SECRET. A bad or missing signature: 400
    and nothing stored. Each event is handled once, by reading its object's current state."""
    if not svc.webhook_secret:
        raise ApiError(
            503,
            "webhooks_not_configured",
            "STRIPE_WEBHOOK_SECRET is not set",
            {"Retry-After": "60"},
        )
    payload = await request.body()
    try:
        stripe.WebhookSignature.verify_header(
            payload, stripe_signature, svc.webhook_secret, TOLERANCE_S
        )
        event = json.loads(payload)
    except (stripe.SignatureVerificationError, ValueError) as exc:
        raise ApiError(400, "bad_signature", f"webhook refused: {exc}") from None
    _check_event(event)
    try:
        outcome = await WebhookHandler(svc.ledger, svc.stripe, svc.clock).receive(event)
    except stripe.StripeError as exc:
        # Stripe could not be read: the event stays unhandled; Stripe delivers it again.
        raise ApiError(
            503,
            "stripe_unavailable",
            f"cannot read the event's object at Stripe: {type(exc).__name__}",
            {"Retry-After": "60"},
        ) from None
    return WebhookOut(
        event_id=outcome.event_id,
        type=outcome.type,
        duplicate=outcome.duplicate,
        result=outcome.result,
    )
