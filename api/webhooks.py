"""POST /v1/stripe/webhook: Stripe's signature instead of a JWT (SPEC section 9)."""

from __future__ import annotations

import json
from typing import Annotated

import stripe
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from api.deps import Svc, documented
from api.errors import ApiError
from api.schemas import WebhookOut
from billing.webhooks import WebhookHandler

router = APIRouter(tags=["stripe"])

TOLERANCE_S = 300  # Stripe's default: a signed request older than 5 minutes is refused


@router.post(
    "/v1/stripe/webhook",
    response_model=None,
    responses={
        200: {"model": WebhookOut},
        **documented(400, 503),
    },
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
) -> JSONResponse:
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
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
        raise ApiError(400, "bad_event", "the payload is not a Stripe event")
    data = event.get("data")
    if not isinstance(event.get("type"), str) or not isinstance(data, dict):
        raise ApiError(400, "bad_event", "the payload is not a Stripe event")
    if not isinstance(data.get("object"), dict):
        raise ApiError(400, "bad_event", "the event has no data.object")
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
    return JSONResponse(
        {
            "event_id": outcome.event_id,
            "type": outcome.type,
            "duplicate": outcome.duplicate,
            "result": outcome.result,
        }
    )
