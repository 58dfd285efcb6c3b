"""The Stripe fake's public names, where the tests and benchmarks have always imported
them from; the fake itself is the package testing/stripe/."""

from testing.stripe import (
    API_VERSION,
    DEFAULT_API_KEY,
    DEFAULT_BASE,
    INVOICE_SEARCH_FIELDS,
    MINIMUM_CHARGE,
    NO_PAYMENT_METHOD,
    STEPS,
    TEST_PAYMENT_METHODS,
    Hold,
    Json,
    PayAttempt,
    RecordedRequest,
    StripeError,
    StripeFake,
    Target,
    parse_form,
    parse_search_query,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_API_KEY",
    "DEFAULT_BASE",
    "INVOICE_SEARCH_FIELDS",
    "MINIMUM_CHARGE",
    "NO_PAYMENT_METHOD",
    "STEPS",
    "TEST_PAYMENT_METHODS",
    "Hold",
    "Json",
    "PayAttempt",
    "RecordedRequest",
    "StripeError",
    "StripeFake",
    "Target",
    "parse_form",
    "parse_search_query",
]
