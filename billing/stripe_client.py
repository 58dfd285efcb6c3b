"""The Stripe client: async over httpx, built once per process and passed down."""

from __future__ import annotations

import stripe

from runtime.config import Settings


def make_stripe_client(settings: Settings) -> stripe.StripeClient | None:
    """None when no STRIPE_API_KEY is set: bills are still made, and stay unsent."""
    if not settings.stripe_api_key:
        return None
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base},
        http_client=stripe.HTTPXClient(),
        # The client retries connection errors and 5xx itself, same idempotency key.
        max_network_retries=settings.stripe_max_network_retries,
    )
