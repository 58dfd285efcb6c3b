"""A stateful fake of Stripe's v1 API for the tests and the benchmarks (see fake.py)."""

from testing.stripe.customers import TEST_PAYMENT_METHODS
from testing.stripe.errors import StripeError
from testing.stripe.fake import StripeFake
from testing.stripe.faults import Hold
from testing.stripe.invoice_states import NO_PAYMENT_METHOD
from testing.stripe.params import parse_form
from testing.stripe.search import INVOICE_SEARCH_FIELDS, parse_search_query
from testing.stripe.shapes import (
    API_VERSION,
    DEFAULT_API_KEY,
    DEFAULT_BASE,
    MINIMUM_CHARGE,
    Json,
    PayAttempt,
    RecordedRequest,
    Target,
)
from testing.stripe.wire import STEPS

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
