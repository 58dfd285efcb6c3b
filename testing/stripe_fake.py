"""A stateful fake of the parts of Stripe's v1 API that the billing reconciler uses.

It is mounted with respx on a base URL (default ``https://api.stripe.test``) and is
meant to be called through stripe-python::

    with StripeFake() as fake:
        cus = fake.add_customer()
        client = fake.client(max_network_retries=2)
        inv = await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})

What it models, as Stripe v1 does it (API 2026-10-28):

* customers (create, retrieve, delete), invoices (create, retrieve, update, list, search,
  finalize, pay, void, mark uncollectible, delete a draft), invoice items (create,
  retrieve, list) and an invoice's lines (line items, the invoice item under
  ``parent.invoice_item_details``); form-encoded parameters, unknown parameters refused,
  metadata limits;
* errors with Stripe's shapes and status codes (400/401/402/404/409/429/500), which
  stripe-python turns into its typed exceptions;
* idempotency: a POST whose endpoint started running has its first response saved
  (5xx and 4xx such as 402 declines, "invoice not editable", "no payment method" included)
  and replayed for the same key (``Idempotent-Replayed: true``); the same key with other
  parameters or on another endpoint is an ``idempotency_error``; requests refused by
  validation, rate limiting or a key in flight are not saved; a key whose first request
  is still running gets a 409 ``idempotency_key_in_use``; keys can be expired;
* money as Stripe moves it: finalizing does **not** pay. Money moves on ``/pay``, or when
  Stripe's automatic collection gets to an ``auto_advance`` invoice
  (``run_automatic_collection``, which a test calls for "an hour later"). Payment uses
  the customer's ``invoice_settings.default_payment_method`` (or ``default_source``);
  none is a 400 on pay for ``charge_automatically``; ``send_invoice`` needs
  ``days_until_due``; declines are 402 ``card_error`` with a ``decline_code``;
* discounts: an invoice created without ``discounts`` inherits the customer's coupon,
  ``discounts=""`` means none; invoice items are ``discountable`` unless told otherwise;
* finance's hand in the Dashboard: ``void_invoice`` (open or uncollectible),
  ``mark_uncollectible`` (open), ``delete_draft`` (drafts only), ``finalize_draft``,
  ``remove_draft_discounts``, ``edit_draft_item`` (change or remove an item of a draft;
  also the API's ``POST``/``DELETE /v1/invoiceitems/{id}``), ``pay_in_dashboard`` (an open or
  uncollectible invoice), ``delete_customer``; paying a paid invoice is a 400 "Invoice is
  already paid" (no error code: Stripe documents none for it), a void one a 400;
* ``attempt_count`` as Stripe counts it: the first attempt, then only automatic retries;
* ``after_next``: something happens (a webhook, finance) between a request running at
  Stripe and its caller reading the answer;
* events: every invoice status change (``invoice.finalized|paid|payment_failed|voided|
  marked_uncollectible``), subscription change (``customer.subscription.*``) and
  customer deletion (``customer.deleted``, its subscriptions canceled with it) is
  appended to ``events`` with a snapshot of the object, as Stripe sends them to a webhook
  endpoint (``take_events`` hands out the new ones); every pay request is recorded in
  ``pay_attempts`` with the invoice's status when it arrived and the ``moment`` (one
  counter over requests and state changes) of that status;
* rate limits: a 429 can be injected (``rate_limit_next``, with or without
  ``Stripe-Should-Retry``), and ``rate_limit_per_endpoint=`` / ``rate_limit_total=``
  requests per second refuse what goes over with a 429, as Stripe's limiter does;
* search that lags writes by ``search_lag_calls`` requests (stale versions included);
* fault injection, one-shot and queued: ``fail_next``, ``timeout_next``,
  ``lose_response_next``, ``delay_next``, ``hold_next`` (a stall the test releases);
* a round trip: ``latency=`` seconds before every request is handled (async clients).

Checked against stripe-python 16.1.0 (API 2026-10-28.endive): ``_http_client._should_retry``
retries 409, 5xx and ``Stripe-Should-Retry: true`` but not a plain 429;
``params/_invoice_create_params.py`` (``discounts``: "If not specified, inherits the
discount from the invoice's customer. Pass an empty string to avoid inheriting any
discounts"); ``params/_invoice_item_create_params.py`` (``discountable`` "Defaults to false
for prorations or negative invoice items, and true for all other invoice items");
docs.stripe.com/idempotency ("We save results only after the execution of an endpoint
begins"); docs.stripe.com/invoicing/integration/automatic-advancement-collection.

Targets for faults are a step name (see ``STEPS``), ``"METHOD /v1/path/*/pattern"``,
a ``(method, pattern)`` tuple, or a bare ``"/v1/path/*"`` pattern (any method); ``*``
stands for one path segment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import string
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import httpx
import respx
import stripe

DEFAULT_BASE = "https://api.stripe.test"
_ENDED_SUBSCRIPTIONS = ("canceled", "incomplete_expired")
DEFAULT_API_KEY = "sk_test_fake"
API_VERSION = "2026-10-28.endive"

Json = dict[str, Any]
Target = str | tuple[str, str]

# step name -> (method, path pattern); "*" is one path segment
STEPS: dict[str, tuple[str, str]] = {
    "create_customer": ("POST", "/v1/customers"),
    "retrieve_customer": ("GET", "/v1/customers/*"),
    "delete_customer": ("DELETE", "/v1/customers/*"),
    "create_invoice": ("POST", "/v1/invoices"),
    "list_invoices": ("GET", "/v1/invoices"),
    "search_invoices": ("GET", "/v1/invoices/search"),
    "retrieve_invoice": ("GET", "/v1/invoices/*"),
    "update_invoice": ("POST", "/v1/invoices/*"),
    "delete_invoice": ("DELETE", "/v1/invoices/*"),
    "list_lines": ("GET", "/v1/invoices/*/lines"),
    "finalize": ("POST", "/v1/invoices/*/finalize"),
    "pay": ("POST", "/v1/invoices/*/pay"),
    "void": ("POST", "/v1/invoices/*/void"),
    "mark_uncollectible": ("POST", "/v1/invoices/*/mark_uncollectible"),
    "create_invoiceitem": ("POST", "/v1/invoiceitems"),
    "list_invoiceitems": ("GET", "/v1/invoiceitems"),
    "retrieve_invoiceitem": ("GET", "/v1/invoiceitems/*"),
    "update_invoiceitem": ("POST", "/v1/invoiceitems/*"),
    "delete_invoiceitem": ("DELETE", "/v1/invoiceitems/*"),
}

# Test payment methods, as in Stripe test mode: id -> decline code (None: the card works)
TEST_PAYMENT_METHODS: dict[str, str | None] = {
    "pm_card_visa": None,
    "pm_card_mastercard": None,
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_visa_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeCustomerFail": "generic_decline",
}

# Stripe's minimum charge amounts (smallest unit); an invoice charged automatically for
# less is marked paid and the amount is added to the customer's balance.
MINIMUM_CHARGE: dict[str, int] = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50}

NO_PAYMENT_METHOD = (
    "This customer has no attached payment source or default payment method. Please "
    "consider adding a default payment method."
)
_ID_CHARS = string.ascii_letters + string.digits
_BRACKETS = re.compile(r"\[([^\]]*)\]")
_CURRENCY = re.compile(r"[a-z]{3}")


class PayAttempt(NamedTuple):
    """A pay request that reached an invoice: the invoice's status then, and since when."""

    moment: int  # StripeFake.moment when it arrived
    invoice: str
    status: str
    status_since: int  # StripeFake.moment of the invoice's last status change
    bill_id: str | None  # metadata tokens_bill_id


class RecordedRequest(NamedTuple):
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None


class StripeError(Exception):
    """A Stripe error response. ``saved``: the endpoint had started (kept under the key)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        saved: bool = False,
        extra: Json | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: Json = {"type": type_, "message": message}
        if code is not None:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.error["param"] = param
        self.error.update(extra or {})
        self.saved = saved

    def body(self) -> Json:
        return {"error": dict(self.error)}


def _missing(param: str) -> StripeError:
    return StripeError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def _no_such(kind: str, obj_id: str, param: str = "id", status: int = 400) -> StripeError:
    return StripeError(status, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


@dataclass
class _Fault:
    kind: str  # fail | timeout | lose_response | delay | hold | after
    target: Target
    status: int = 500
    error: Json | None = None
    saved: bool | None = None
    should_retry: bool | None = None
    seconds: float = 0.0
    hold: Hold | None = None
    action: Callable[[], Any] | None = None


class Hold:
    """A stalled request (``StripeFake.hold_next``): ``arrived`` is set once the request
    is stalled; ``release()`` lets it go on."""

    def __init__(self, *, reached: bool) -> None:
        self.reached = reached
        self.arrived = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def wait(self) -> None:
        self.arrived.set()
        await self._released.wait()


@dataclass
class _Saved:
    method: str
    path: str
    params: dict[str, Any]
    status: int = 0
    body: Json | None = None
    request_id: str = ""
    in_flight: bool = False
    extra_headers: dict[str, str] | None = None


@dataclass(frozen=True)
class _Route:
    method: str
    regex: re.Pattern[str]
    step: str
    handler: Callable[..., Json]


def _clone(obj: Any) -> Any:
    """A copy of a JSON-like tree (dicts, lists, immutable leaves): what copy.deepcopy
    does for the fake's objects, several times faster (no memo)."""
    if type(obj) is dict:
        return {k: _clone(v) for k, v in obj.items()}
    if type(obj) is list:
        return [_clone(v) for v in obj]
    return obj


# ---------------------------------------------------------------- form parameters


def parse_form(text: str) -> dict[str, Any]:
    """Decode Stripe's form encoding: ``metadata[team]=a&expand[0]=b`` -> nested dicts/lists."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        base = key.split("[", 1)[0]
        parts = [base, *_BRACKETS.findall(key[len(base) :])]
        node = out
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
            if parts[i + 1] == "":
                parts[i + 1] = str(len(node))
        node[parts[-1]] = value
    result: dict[str, Any] = _listify(out)
    return result


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def _path_match(pattern: str, path: str) -> bool:
    want, got = pattern.strip("/").split("/"), path.strip("/").split("/")
    return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got, strict=True))


def _check_known(
    params: dict[str, Any], allowed: Iterable[str], nested: dict[str, set[str]] | None = None
) -> None:
    allowed = set(allowed) | {"expand"}
    for name, value in params.items():
        if name not in allowed:
            raise StripeError(400, f"Received unknown parameter: {name}", param=name)
        subset = (nested or {}).get(name)
        if subset is not None and isinstance(value, dict):
            for sub in value:
                if sub not in subset:
                    raise StripeError(
                        400, f"Received unknown parameter: {name}[{sub}]", param=f"{name}[{sub}]"
                    )


def _str(params: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = params.get(name, default)
    if value is not None and not isinstance(value, str):
        raise StripeError(400, f"Invalid string: {value!r}", param=name)
    return value


def _int(params: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise StripeError(400, f"Invalid integer: {value}", param=name)
    return int(value)


def _bool(params: dict[str, Any], name: str, default: bool | None = None) -> bool | None:
    value = params.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise StripeError(400, f"Invalid boolean: {value}", param=name)
    return bool(value == "true")


def _decimal(value: Any, name: str) -> Decimal:
    try:
        number = Decimal(value) if isinstance(value, str) else Decimal("nan")
    except InvalidOperation:
        number = Decimal("nan")
    if not number.is_finite() or -number.as_tuple().exponent > 12:  # type: ignore[operator]
        raise StripeError(400, f"Invalid decimal: {value}", param=name)
    return number


def _limit(params: dict[str, Any]) -> int:
    limit = _int(params, "limit", 10)
    if limit is None or not 1 <= limit <= 100:
        raise StripeError(400, "Invalid limit: must be between 1 and 100", param="limit")
    return limit


def _enum(params: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = _str(params, name, default) or default
    if value not in choices:
        raise StripeError(400, f"Invalid {name}: must be one of {', '.join(choices)}", param=name)
    return value


def _currency(params: dict[str, Any], name: str = "currency") -> str | None:
    value = _str(params, name)
    if value is None:
        return None
    if not _CURRENCY.fullmatch(value.lower()):
        raise StripeError(
            400,
            f"Invalid currency: {value}. Stripe currently supports these "
            "currencies: usd, eur, gbp, ...",
            param=name,
        )
    return value.lower()


def _metadata(params: dict[str, Any], current: dict[str, str] | None = None) -> dict[str, str]:
    result = dict(current or {})
    value = params.get("metadata")
    if value is None:
        return result
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise StripeError(400, "Invalid object", param="metadata")
    for key, val in value.items():
        if not isinstance(val, str):
            raise StripeError(
                400, "Invalid metadata: values must be strings", param=f"metadata[{key}]"
            )
        if len(key) > 40:
            raise StripeError(
                400,
                "Metadata keys can have a maximum length of 40 characters.",
                param=f"metadata[{key}]",
            )
        if len(val) > 500:
            raise StripeError(
                400,
                "Metadata values can have a maximum length of 500 characters.",
                param=f"metadata[{key}]",
            )
        if val == "":
            result.pop(key, None)
        else:
            result[key] = val
    if len(result) > 50:
        raise StripeError(400, "You can have at most 50 metadata keys.", param="metadata")
    return result


# ---------------------------------------------------------------- search queries

_CLAUSE = re.compile(
    r"""\s*(?P<neg>-?)(?:metadata\[(?:'(?P<mk1>[^']*)'|"(?P<mk2>[^"]*)")\]|(?P<field>[a-z_]+))"""
    r"""\s*(?P<op>:|>=|<=|>|<|~)\s*"""
    r"""(?:'(?P<v1>[^']*)'|"(?P<v2>[^"]*)"|(?P<num>-?\d+)|(?P<null>null))\s*"""
)
_JOIN = re.compile(r"(AND|OR)\b")
INVOICE_SEARCH_FIELDS = {
    "created",
    "currency",
    "customer",
    "metadata",
    "number",
    "receipt_number",
    "status",
    "subscription",
    "total",
}


@dataclass(frozen=True)
class _Clause:
    negate: bool
    field: str
    meta_key: str | None
    op: str
    value: str | int | None


def parse_search_query(query: str) -> tuple[str, list[_Clause]]:
    """Parse Stripe's search language (clauses joined by all-AND or all-OR)."""
    clauses: list[_Clause] = []
    joins: set[str] = set()
    pos = 0
    while True:
        m = _CLAUSE.match(query, pos)
        if not m:
            raise StripeError(
                400,
                f"Invalid query: could not parse near position {pos}: {query[pos : pos + 30]!r}",
                param="query",
            )
        clauses.append(_clause(m))
        pos = m.end()
        if pos >= len(query):
            break
        j = _JOIN.match(query, pos)
        if not j:
            raise StripeError(
                400, f"Invalid query: expected AND or OR at position {pos}", param="query"
            )
        joins.add(j.group(1))
        pos = j.end()
    if len(joins) > 1:
        raise StripeError(
            400, "Invalid query: AND and OR cannot be combined in one query", param="query"
        )
    if len(clauses) > 10:
        raise StripeError(400, "Invalid query: at most 10 clauses", param="query")
    return (joins.pop() if joins else "AND"), clauses


def _clause(m: re.Match[str]) -> _Clause:
    meta_key = m.group("mk1") if m.group("mk1") is not None else m.group("mk2")
    field = "metadata" if meta_key is not None else m.group("field")
    if field not in INVOICE_SEARCH_FIELDS:
        raise StripeError(
            400,
            f"Field `{field}` is an unsupported search field for resource `invoices`.",
            param="query",
        )
    value: str | int | None
    if m.group("num") is not None:
        value = int(m.group("num"))
    elif m.group("null") is not None:
        value = None
    else:
        value = m.group("v1") if m.group("v1") is not None else m.group("v2")
    return _Clause(m.group("neg") == "-", field, meta_key, m.group("op"), value)


def _clause_matches(clause: _Clause, obj: Json) -> bool:
    if clause.meta_key is not None:
        actual: Any = obj.get("metadata", {}).get(clause.meta_key)
    else:
        actual = obj.get(clause.field)
    value = clause.value
    if clause.op == ":":
        hit = (actual is None) if value is None else str(actual) == str(value)
    elif clause.op == "~":
        hit = actual is not None and str(value) in str(actual)
    else:
        hit = _compare(actual, clause.op, value)
    return hit != clause.negate


def _compare(actual: Any, op: str, value: Any) -> bool:
    if not isinstance(actual, int) or not isinstance(value, int):
        return False
    return {">": actual > value, "<": actual < value, ">=": actual >= value, "<=": actual <= value}[
        op
    ]


# ---------------------------------------------------------------- the fake


class StripeFake:
    """Stateful Stripe v1 fake on respx. Use as a (sync or async) context manager."""

    def __init__(
        self,
        base: str = DEFAULT_BASE,
        api_key: str = DEFAULT_API_KEY,
        *,
        search_lag_calls: int = 0,
        seed: int | None = None,
        now: int | None = None,
        latency: float = 0.0,
        rate_limit_per_endpoint: float | None = None,
        rate_limit_total: float | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        # Seconds every request spends on the wire before Stripe handles it (async
        # clients only): a benchmark's stand-in for Stripe's round trip.
        self.latency = latency
        self.api_key = api_key
        self.search_lag_calls = search_lag_calls
        # Stripe's limiter: requests per second per endpoint (method and path pattern)
        # and overall; what goes over gets a 429 (never saved under its key).
        self.rate_limit_per_endpoint = rate_limit_per_endpoint
        self.rate_limit_total = rate_limit_total
        self.rate_limited: list[RecordedRequest] = []
        self._windows: dict[str, list[float]] = {}
        self.now = now
        self.minimum_charge = dict(MINIMUM_CHARGE)

        self.customers: dict[str, Json] = {}
        self.invoices: dict[str, Json] = {}
        self.invoice_items: dict[str, Json] = {}
        self.subscriptions: dict[str, Json] = {}  # see "subscriptions" at the end
        self.requests: list[RecordedRequest] = []
        self.executed: list[RecordedRequest] = []  # requests whose endpoint actually ran
        self.internal_errors: list[BaseException] = []  # bugs in the fake itself
        # The events Stripe would send to webhook endpoints, oldest first (see "events").
        self.events: list[Json] = []
        self.pay_attempts: list[PayAttempt] = []
        # One counter over requests and Stripe's own state changes: orders both.
        self.moment = 0
        self._status_moment: dict[str, int] = {}

        self._rng = random.Random(seed)
        self._cards: dict[str, str | None] = {}  # customer -> decline code or None (works)
        self._no_payment_method: set[str] = set()
        self._coupons: dict[str, Json] = {}  # coupon id -> coupon
        self._discounts_by_id: dict[str, str] = {}  # invoice discount id -> coupon id
        self._holds: list[Hold] = []
        self._faults: list[_Fault] = []
        self._idem: dict[str, _Saved] = {}
        self._tick = 0
        self._seq = 0
        self._order: dict[str, int] = {}
        self._search_versions: dict[str, list[tuple[int, Json]]] = {}
        self._base_path = urlsplit(self.base).path.rstrip("/")
        self._routes = self._build_routes()

        self.router = respx.MockRouter(base_url=self.base, assert_all_called=False)
        self.router.route().mock(side_effect=self._handle)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> StripeFake:
        self.router.start()
        return self

    def stop(self) -> None:
        self.router.stop()

    def __enter__(self) -> StripeFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.internal_errors and exc[0] is None:
            raise AssertionError("the Stripe fake crashed") from self.internal_errors[0]

    async def __aenter__(self) -> StripeFake:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def client(
        self, max_network_retries: int = 0, api_key: str | None = None
    ) -> stripe.StripeClient:
        """A stripe-python client on this fake, the way production builds one."""
        return stripe.StripeClient(
            api_key or self.api_key,
            base_addresses={"api": self.base},
            http_client=stripe.HTTPXClient(),
            max_network_retries=max_network_retries,
        )

    # ------------------------------------------------------------ test helpers

    def add_customer(
        self,
        id: str | None = None,
        card_declines: bool | str = False,
        *,
        email: str | None = None,
        name: str | None = None,
        metadata: dict[str, str] | None = None,
        currency: str | None = None,
        payment_method: bool = True,
        card_is_default: bool = True,
        balance: int = 0,
        coupon_percent_off: int | None = None,
        coupon_amount_off: int | None = None,
    ) -> str:
        """Add a customer. ``card_declines``: True or a decline code (``insufficient_funds``).
        ``payment_method=False``: no payment method at all; ``card_is_default=False``: a
        card is attached but is not the customer's invoice default, which is the same to
        invoices (Stripe charges ``invoice_settings.default_payment_method`` or
        ``default_source``): paying a ``charge_automatically`` invoice fails with a 400.
        ``coupon_percent_off`` / ``coupon_amount_off``: a coupon on the customer, which
        invoices inherit unless created with ``discounts=""``."""
        cus = self._new_customer(id, email=email, name=name, metadata=metadata or {})
        cus["currency"] = currency
        cus["balance"] = balance
        if payment_method and card_is_default:
            decline = (
                card_declines
                if isinstance(card_declines, str)
                else ("generic_decline" if card_declines else None)
            )
            self._set_card(cus["id"], decline)
        if coupon_percent_off is not None or coupon_amount_off is not None:
            self.add_coupon(cus["id"], percent_off=coupon_percent_off, amount_off=coupon_amount_off)
        return str(cus["id"])

    def add_coupon(
        self, customer: str, *, percent_off: int | None = None, amount_off: int | None = None
    ) -> str:
        """Apply a coupon to a customer (as finance does in the Dashboard)."""
        coupon_id = self._new_id("co_", 8)
        coupon: Json = {
            "id": coupon_id,
            "object": "coupon",
            "percent_off": percent_off,
            "amount_off": amount_off,
            "duration": "forever",
        }
        self._coupons[coupon_id] = coupon
        self.customers[customer]["discount"] = {
            "id": self._new_id("di_", 14),
            "object": "discount",
            "customer": customer,
            "source": {"type": "coupon", "coupon": coupon_id},
            "coupon": coupon,
        }
        return coupon_id

    def remove_payment_method(self, customer: str) -> None:
        """The customer's default card goes away (detached in the Dashboard)."""
        self._cards.pop(customer, None)
        self._no_payment_method.add(customer)
        self.customers[customer]["invoice_settings"]["default_payment_method"] = None

    def void_invoice(self, invoice: str) -> None:
        """Finance voids an open (or uncollectible) invoice in the Dashboard."""
        self._void({}, invoice)

    def mark_uncollectible(self, invoice: str) -> None:
        """Finance marks an open invoice uncollectible in the Dashboard."""
        self._mark_uncollectible({}, invoice)

    def discount_draft(self, invoice: str, *, percent_off: int) -> None:
        """Finance puts a coupon on a draft invoice in the Dashboard."""
        inv = self.invoices[invoice]
        assert inv["status"] == "draft"
        coupon = self.add_coupon(inv["customer"], percent_off=percent_off)
        self.customers[inv["customer"]]["discount"] = None
        did = self._new_id("di_", 14)
        self._discounts_by_id[did] = coupon
        inv["discounts"] = [*inv["discounts"], did]
        self._recompute_totals(inv)
        self._touch(inv)

    def delete_draft(self, invoice: str) -> None:
        """Finance deletes a draft invoice in the Dashboard."""
        self._delete_invoice({}, invoice)

    def remove_draft_discounts(self, invoice: str) -> None:
        """Finance takes the coupons off a draft invoice in the Dashboard (fixing it)."""
        inv = self.invoices[invoice]
        assert inv["status"] == "draft"
        inv["discounts"] = []
        self._recompute_totals(inv)
        self._touch(inv)

    def finalize_draft(self, invoice: str) -> None:
        """Finance finalizes a draft in the Dashboard. Finalizing does not charge; an
        amount due of 0 is marked paid at once, as at Stripe."""
        self._finalize({}, invoice)

    def edit_draft_item(self, item: str, *, amount: int | None = None) -> None:
        """Finance changes an item of a draft in the Dashboard (amount None: removes it)."""
        if amount is None:
            self._delete_item({}, item)
        else:
            self._update_item({"amount": str(amount)}, item)

    def pay_in_dashboard(self, invoice: str) -> None:
        """The customer pays on the hosted page (or finance charges the card by hand);
        the invoice may be open or uncollectible, as at Stripe."""
        self._pay({}, invoice)

    def after_next(self, target: Target, action: Callable[[], Any]) -> None:
        """Next matching request runs, then ``action`` runs (awaited if it returns an
        awaitable) before the response is on its way back: what Stripe, finance or a
        webhook did between a request and its caller hearing the answer."""
        self._queue(_Fault("after", target, action=action))

    def take_events(self) -> list[Json]:
        """The events emitted since the last call (each also stays in ``events``)."""
        start = getattr(self, "_events_taken", 0)
        self._events_taken = len(self.events)
        return [_clone(e) for e in self.events[start:]]

    def rate_limit_next(self, target: Target, *, should_retry: bool | None = None) -> None:
        """Next matching request gets a 429 ``rate_limit`` (not saved under its key), with
        ``Stripe-Should-Retry`` set as told (stripe-python retries only ``true``)."""
        self.fail_next(target, status=429, saved=False, should_retry=should_retry)

    def hold_next(self, target: Target, *, reached: bool = True) -> Hold:
        """Next matching request stalls until the test calls ``release()`` on the returned
        hold (async clients only). ``reached=True``: the request is at Stripe, in flight
        (its key answers 409 ``idempotency_key_in_use`` meanwhile) and runs on release;
        ``False``: it is stuck on the way and reaches Stripe only on release."""
        hold = Hold(reached=reached)
        self._queue(_Fault("hold", target, hold=hold))
        return hold

    def set_card_declines(self, customer: str, declines: bool | str = True) -> None:
        decline = (
            declines if isinstance(declines, str) else ("generic_decline" if declines else None)
        )
        self._set_card(customer, decline)

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

    def fail_next(
        self,
        target: Target,
        status: int = 500,
        *,
        error: Json | None = None,
        saved: bool | None = None,
        should_retry: bool | None = None,
    ) -> None:
        """Next matching request returns ``status`` without running the endpoint. A 5xx is
        saved under the request's idempotency key (as at Stripe) unless ``saved=False``;
        ``should_retry`` sets the ``Stripe-Should-Retry`` header."""
        self._queue(
            _Fault(
                "fail", target, status=status, error=error, saved=saved, should_retry=should_retry
            )
        )

    def timeout_next(self, target: Target) -> None:
        """Next matching request raises httpx.ReadTimeout without running the endpoint."""
        self._queue(_Fault("timeout", target))

    def lose_response_next(self, target: Target) -> None:
        """Next matching request runs (and is saved under its key), then httpx.ReadTimeout."""
        self._queue(_Fault("lose_response", target))

    def delay_next(self, target: Target, seconds: float) -> None:
        """Next matching request stays in flight for ``seconds`` (async clients only): a
        second request with the same key meanwhile gets 409 idempotency_key_in_use."""
        self._queue(_Fault("delay", target, seconds=seconds))

    @property
    def pending_faults(self) -> list[tuple[str, Target]]:
        return [(f.kind, f.target) for f in self._faults]

    def clear_faults(self) -> None:
        self._faults.clear()

    def expire_idempotency_keys(self, keys: Iterable[str] | None = None) -> None:
        """Forget saved idempotency keys (all, or these), as Stripe does after ~24 h."""
        if keys is None:
            self._idem.clear()
        else:
            for key in keys:
                self._idem.pop(key, None)

    def flush_search_index(self) -> None:
        """Make every write searchable now (the search index catches up)."""
        for versions in self._search_versions.values():
            versions[:] = [(0, versions[-1][1])]

    def calls(self, target: Target) -> list[RecordedRequest]:
        """The recorded requests that match a step name or path pattern."""
        return [
            r
            for r in self.requests
            if self._target_matches(target, self._step_of(r.method, r.path), r)
        ]

    def run_automatic_collection(self) -> None:
        """What Stripe does on its own about an hour later: finalize drafts with
        auto_advance and attempt payment on open auto_advance charge_automatically ones."""
        for inv in list(self.invoices.values()):
            if not inv["auto_advance"] or self.customers[inv["customer"]].get("deleted"):
                continue
            if inv["status"] == "draft":
                self._do_finalize(inv, charge=True)
            elif inv["status"] == "open" and inv["collection_method"] == "charge_automatically":
                with contextlib.suppress(StripeError):
                    self._attempt_payment(inv, automatic=True)

    # ------------------------------------------------------------ events

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

    # ------------------------------------------------------------ internals: plumbing

    def _queue(self, fault: _Fault) -> None:
        target = fault.target
        if (
            isinstance(target, str)
            and not target.startswith("/")
            and " " not in target
            and target not in STEPS
        ):
            raise ValueError(f"unknown step {target!r}; steps: {', '.join(STEPS)}")
        self._faults.append(fault)

    def _now(self) -> int:
        return int(self.now if self.now is not None else time.time())

    def _new_id(self, prefix: str, length: int = 24) -> str:
        return prefix + "".join(self._rng.choice(_ID_CHARS) for _ in range(length))

    def _build_routes(self) -> list[_Route]:
        seg = r"([^/]+)"
        table: list[tuple[str, str, str, Callable[..., Json]]] = [
            ("POST", "/v1/customers", "create_customer", self._create_customer),
            ("GET", f"/v1/customers/{seg}", "retrieve_customer", self._retrieve_customer),
            ("DELETE", f"/v1/customers/{seg}", "delete_customer", self._delete_customer),
            ("POST", "/v1/invoices", "create_invoice", self._create_invoice),
            ("GET", "/v1/invoices", "list_invoices", self._list_invoices),
            ("GET", "/v1/invoices/search", "search_invoices", self._search_invoices),
            ("GET", f"/v1/invoices/{seg}", "retrieve_invoice", self._retrieve_invoice),
            ("POST", f"/v1/invoices/{seg}", "update_invoice", self._update_invoice),
            ("DELETE", f"/v1/invoices/{seg}", "delete_invoice", self._delete_invoice),
            ("GET", f"/v1/invoices/{seg}/lines", "list_lines", self._list_lines),
            ("POST", f"/v1/invoices/{seg}/finalize", "finalize", self._finalize),
            ("POST", f"/v1/invoices/{seg}/pay", "pay", self._pay),
            ("POST", f"/v1/invoices/{seg}/void", "void", self._void),
            (
                "POST",
                f"/v1/invoices/{seg}/mark_uncollectible",
                "mark_uncollectible",
                self._mark_uncollectible,
            ),
            ("POST", "/v1/invoiceitems", "create_invoiceitem", self._create_item),
            ("GET", "/v1/invoiceitems", "list_invoiceitems", self._list_items),
            ("GET", f"/v1/invoiceitems/{seg}", "retrieve_invoiceitem", self._retrieve_item),
            ("POST", f"/v1/invoiceitems/{seg}", "update_invoiceitem", self._update_item),
            ("DELETE", f"/v1/invoiceitems/{seg}", "delete_invoiceitem", self._delete_item),
            *self._subscription_routes(seg),
        ]
        return [_Route(m, re.compile(p), s, h) for m, p, s, h in table]

    def _match(self, method: str, path: str) -> tuple[_Route | None, tuple[str, ...]]:
        for route in self._routes:
            if route.method == method and (m := route.regex.fullmatch(path)):
                return route, m.groups()
        return None, ()

    def _step_of(self, method: str, path: str) -> str | None:
        route, _ = self._match(method, path)
        return route.step if route else None

    @staticmethod
    def _target_matches(target: Target, step: str | None, req: RecordedRequest) -> bool:
        if isinstance(target, tuple):
            method, pattern = target
        elif " " in target:
            method, pattern = target.split(" ", 1)
        elif target.startswith("/"):
            method, pattern = "", target
        else:
            return target == step
        if method and method.upper() != req.method:
            return False
        return _path_match(pattern.strip(), req.path)

    def _pop_fault(self, step: str | None, req: RecordedRequest) -> _Fault | None:
        for i, fault in enumerate(self._faults):
            if self._target_matches(fault.target, step, req):
                return self._faults.pop(i)
        return None

    def _authorized(self, request: httpx.Request) -> StripeError | None:
        auth = request.headers.get("authorization", "")
        key = ""
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        elif auth.lower().startswith("basic "):
            key = base64.b64decode(auth[6:]).decode(errors="replace").split(":", 1)[0]
        if not key:
            return StripeError(
                401,
                "You did not provide an API key. You need to provide your "
                "API key in the Authorization header, using Bearer auth "
                "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        if key != self.api_key:
            shown = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
            return StripeError(401, f"Invalid API Key provided: {shown}")
        return None

    def _response(
        self,
        status: int,
        body: Json,
        *,
        key: str | None,
        request_id: str,
        extra: dict[str, str] | None = None,
    ) -> httpx.Response:
        headers = {
            "Request-Id": request_id,
            "Stripe-Version": API_VERSION,
            "Content-Type": "application/json",
        }
        if key:
            headers["Idempotency-Key"] = key
        headers.update(extra or {})
        return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)

    def _error(
        self,
        err: StripeError,
        request_id: str,
        key: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = err.body()
        body["error"]["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return self._response(err.status, body, key=key, request_id=request_id, extra=extra)

    # ------------------------------------------------------------ request handling

    def _handle(self, request: httpx.Request) -> httpx.Response | Coroutine[Any, Any, Any]:
        if self.latency > 0:
            return self._after_latency(request)
        return self._handle_now(request)

    async def _after_latency(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.latency)
        response = self._handle_now(request)
        if not isinstance(response, httpx.Response):  # a delay fault: in flight a while more
            response = await response
        return response

    def _handle_now(self, request: httpx.Request) -> httpx.Response | Coroutine[Any, Any, Any]:
        self._tick += 1
        self.moment += 1
        request_id = self._new_id("req_", 14)
        method = request.method.upper()
        path = request.url.path
        if self._base_path and path.startswith(self._base_path):
            path = path[len(self._base_path) :] or "/"
        text = request.content.decode() if method == "POST" else request.url.query.decode()
        params = parse_form(text)
        key = request.headers.get("idempotency-key") if method == "POST" else None
        req = RecordedRequest(method, path, params, key)
        self.requests.append(req)

        if (auth_error := self._authorized(request)) is not None:
            return self._error(auth_error, request_id)
        route, args = self._match(method, path)
        if route is not None and self._over_rate_limit(route):
            self.rate_limited.append(req)
            return self._error(
                StripeError(
                    429,
                    "Request rate limit exceeded. Learn more about rate limits "
                    "here https://stripe.com/docs/rate-limits.",
                    type_="invalid_request_error",
                    code="rate_limit",
                ),
                request_id,
                key,
            )
        fault = self._pop_fault(route.step if route else None, req)
        if fault is not None and fault.kind == "timeout":
            raise httpx.ReadTimeout("fake: the request timed out", request=request)
        if route is None:
            return self._error(
                StripeError(
                    404,
                    f"Unrecognized request URL ({method}: {path})."
                    " Please see https://stripe.com/docs or we can help"
                    " at https://support.stripe.com/.",
                ),
                request_id,
            )
        if fault is not None and fault.kind == "delay":
            wait = asyncio.sleep(fault.seconds)
            return self._delayed(wait, True, request, route, args, req, None, request_id)
        if fault is not None and fault.kind == "after":
            return self._then(self._dispatch(request, route, args, req, None, request_id), fault)
        if fault is not None and fault.kind == "hold":
            assert fault.hold is not None
            held = fault.hold
            return self._delayed(
                held.wait(), held.reached, request, route, args, req, None, request_id
            )
        return self._dispatch(request, route, args, req, fault, request_id)

    async def _then(self, response: httpx.Response, fault: _Fault) -> httpx.Response:
        assert fault.action is not None
        outcome = fault.action()
        if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
            await outcome
        return response

    def _over_rate_limit(self, route: _Route) -> bool:
        """Stripe's limiter (a one-second sliding window): per endpoint, then overall."""
        if self.rate_limit_per_endpoint is None and self.rate_limit_total is None:
            return False
        now = time.monotonic()
        checks = [
            (f"{route.method} {route.regex.pattern}", self.rate_limit_per_endpoint),
            ("*", self.rate_limit_total),
        ]
        windows = []
        for name, limit in checks:
            if limit is None:
                continue
            window = self._windows.setdefault(name, [])
            while window and window[0] <= now - 1.0:
                window.pop(0)
            if len(window) >= limit:
                return True
            windows.append(window)
        for window in windows:
            window.append(now)
        return False

    async def _delayed(
        self,
        wait: Coroutine[Any, Any, Any],
        reached: bool,
        request: httpx.Request,
        route: _Route,
        args: tuple[str, ...],
        req: RecordedRequest,
        fault: _Fault | None,
        request_id: str,
    ) -> httpx.Response:
        """A request that stalls: at Stripe already (``reached``: its key is in flight
        meanwhile), or on the way there (it reaches Stripe when the wait is over)."""
        key = req.idempotency_key
        if not reached:
            await wait
            return self._dispatch(request, route, args, req, fault, request_id)
        if key and key in self._idem:
            if not self._idem[key].in_flight:
                await wait  # a replay that is slow to come back
            else:
                wait.close()
            return self._dispatch(request, route, args, req, fault, request_id)
        placeholder = None
        if key:
            placeholder = _Saved(req.method, req.path, req.params, in_flight=True)
            self._idem[key] = placeholder
        try:
            await wait
        finally:
            if placeholder is not None and self._idem.get(key or "") is placeholder:
                del self._idem[key or ""]
        return self._dispatch(request, route, args, req, fault, request_id)

    def _dispatch(
        self,
        request: httpx.Request,
        route: _Route,
        args: tuple[str, ...],
        req: RecordedRequest,
        fault: _Fault | None,
        request_id: str,
    ) -> httpx.Response:
        key = req.idempotency_key
        saved = self._idem.get(key) if key else None
        if saved is not None:
            response = self._replay(saved, req, request_id, fault)
        elif fault is not None and fault.kind == "fail":
            response = self._injected_failure(fault, req, request_id)
        else:
            response = self._execute(route, args, req, request_id)
        if fault is not None and fault.kind == "lose_response":
            raise httpx.ReadTimeout("fake: the response was lost", request=request)
        return response

    def _replay(
        self, saved: _Saved, req: RecordedRequest, request_id: str, fault: _Fault | None
    ) -> httpx.Response:
        key = req.idempotency_key
        if saved.in_flight:
            return self._error(
                StripeError(
                    409,
                    "There is currently another in-progress request using this idempotency "
                    "key (that probably means you submitted twice, and the other request is still "
                    f"going through): {key}. Please try this request again later.",
                    code="idempotency_key_in_use",
                ),
                request_id,
                key,
            )
        if (saved.method, saved.path) != (req.method, req.path):
            return self._error(
                StripeError(
                    400,
                    "Keys for idempotent requests can only be used for the same endpoint "
                    f"they were first used for ('{saved.method} {saved.path}' vs '{req.method} "
                    f"{req.path}'). Try using a key other than '{key}' if you meant to execute a "
                    "different request.",
                    type_="idempotency_error",
                ),
                request_id,
                key,
            )
        if saved.params != req.params:
            return self._error(
                StripeError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you meant "
                    "to execute a different request.",
                    type_="idempotency_error",
                ),
                request_id,
                key,
            )
        if fault is not None and fault.kind == "fail":
            return self._injected_failure(fault, req, request_id, save=False)
        assert saved.body is not None
        headers = {
            "Idempotent-Replayed": "true",
            "Original-Request": saved.request_id,
            **(saved.extra_headers or {}),
        }
        return self._response(
            saved.status, _clone(saved.body), key=key, request_id=request_id, extra=headers
        )

    def _injected_failure(
        self, fault: _Fault, req: RecordedRequest, request_id: str, save: bool = True
    ) -> httpx.Response:
        err = self._fault_error(fault)
        headers = {}
        if fault.should_retry is not None:
            headers["Stripe-Should-Retry"] = "true" if fault.should_retry else "false"
        body = err.body()
        saved = fault.saved if fault.saved is not None else fault.status >= 500
        if save and saved and req.idempotency_key:
            self._idem[req.idempotency_key] = _Saved(
                req.method,
                req.path,
                req.params,
                fault.status,
                body,
                request_id,
                extra_headers=headers,
            )
        return self._response(
            fault.status, body, key=req.idempotency_key, request_id=request_id, extra=headers
        )

    @staticmethod
    def _fault_error(fault: _Fault) -> StripeError:
        if fault.error is not None:
            err = StripeError(fault.status, str(fault.error.get("message", "error")))
            err.error = dict(fault.error)
            return err
        if fault.status == 429:
            return StripeError(
                429,
                "Request rate limit exceeded. Learn more about rate limits "
                "here https://stripe.com/docs/rate-limits.",
                code="rate_limit",
            )
        if fault.status == 409:
            return StripeError(
                409,
                "This object cannot be accessed right now because another "
                "API request or Stripe process is currently accessing it.",
                code="lock_timeout",
            )
        if fault.status >= 500:
            return StripeError(fault.status, "An unknown error occurred", type_="api_error")
        return StripeError(fault.status, "Injected error")

    def _execute(
        self, route: _Route, args: tuple[str, ...], req: RecordedRequest, request_id: str
    ) -> httpx.Response:
        key = req.idempotency_key
        try:
            body = route.handler(req.params, *args)
            status = 200
        except StripeError as err:
            if not err.saved:  # refused before the endpoint ran: not saved, not executed
                return self._error(err, request_id, key)
            status, body = err.status, err.body()
            body["error"]["request_log_url"] = (
                f"https://dashboard.stripe.com/test/logs/{request_id}"
            )
        except Exception as exc:  # a bug in the fake: answer 500 and fail the test on exit
            self.internal_errors.append(exc)
            crash = StripeError(500, f"stripe fake internal error: {exc!r}", type_="api_error")
            return self._error(crash, request_id, key)
        self.executed.append(req)
        if key:
            self._idem[key] = _Saved(
                req.method, req.path, req.params, status, _clone(body), request_id
            )
        return self._response(status, body, key=key, request_id=request_id)

    # ------------------------------------------------------------ objects

    def _set_card(self, customer: str, decline: str | None) -> None:
        self._cards[customer] = decline
        self._no_payment_method.discard(customer)
        cus = self.customers.get(customer)
        if cus and not cus.get("deleted"):
            pm = "pm_card_chargeDeclined" if decline else "pm_card_visa"
            cus["invoice_settings"]["default_payment_method"] = pm

    def _new_customer(
        self, cus_id: str | None, *, email: str | None, name: str | None, metadata: dict[str, str]
    ) -> Json:
        cus_id = cus_id or self._new_id("cus_", 14)
        prefix = "".join(self._rng.choice(string.ascii_uppercase + string.digits) for _ in range(8))
        cus: Json = {
            "id": cus_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self._now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": email,
            "invoice_prefix": prefix,
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": dict(metadata),
            "name": name,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self.customers[cus_id] = cus
        self._no_payment_method.add(cus_id)
        return cus

    def _customer(self, cus_id: str | None, param: str = "customer") -> Json:
        if cus_id is None:
            raise _missing(param)
        cus = self.customers.get(cus_id)
        if cus is None or cus.get("deleted"):
            raise _no_such("customer", cus_id, param)
        return cus

    def _invoice(self, inv_id: str, param: str = "id", status: int = 404) -> Json:
        inv = self.invoices.get(inv_id)
        if inv is None:
            raise _no_such("invoice", inv_id, param, status)
        return inv

    def _remember(self, obj: Json) -> None:
        self._seq += 1
        self._order[obj["id"]] = self._seq

    def _touch(self, inv: Json) -> None:
        """Record a write for the (lagging) search index."""
        visible_from = self._tick + self.search_lag_calls + 1
        versions = self._search_versions.setdefault(inv["id"], [])
        # Versions older than the newest one visible now can never be searched again.
        visible = [i for i, (since, _) in enumerate(versions) if since <= self._tick]
        if visible:
            del versions[: visible[-1]]
        versions.append((visible_from, _clone(inv)))

    def _render_invoice(self, inv: Json, params: dict[str, Any] | None = None) -> Json:
        out = _clone(inv)
        lines = out["lines"]
        lines["has_more"] = len(lines["data"]) > 10
        lines["data"] = lines["data"][:10]
        return self._expand(out, params or {}, {"customer": self.customers})

    def _expand(
        self, obj: Json, params: dict[str, Any], sources: dict[str, dict[str, Json]]
    ) -> Json:
        expand = params.get("expand") or []
        for field in expand if isinstance(expand, list) else [expand]:
            if field not in sources:
                raise StripeError(
                    400, f"This property cannot be expanded ({field}).", param="expand"
                )
            ref = obj.get(field)
            if isinstance(ref, str) and ref in sources[field]:
                obj[field] = _clone(sources[field][ref])
        return obj

    def _paginate(self, objs: list[Json], params: dict[str, Any], url: str, kind: str) -> Json:
        limit = _limit(params)
        ids = [o["id"] for o in objs]
        after, before = _str(params, "starting_after"), _str(params, "ending_before")
        if after is not None:
            if after not in ids:
                raise _no_such(kind, after, "starting_after")
            rest = objs[ids.index(after) + 1 :]
            page, has_more = rest[:limit], len(rest) > limit
        elif before is not None:
            if before not in ids:
                raise _no_such(kind, before, "ending_before")
            rest = objs[: ids.index(before)]
            page, has_more = rest[-limit:], len(rest) > limit
        else:
            page, has_more = objs[:limit], len(objs) > limit
        return {"object": "list", "data": page, "has_more": has_more, "url": url}

    # ------------------------------------------------------------ customers

    def _create_customer(self, params: dict[str, Any]) -> Json:
        _check_known(
            params,
            {
                "email",
                "name",
                "description",
                "metadata",
                "phone",
                "payment_method",
                "invoice_settings",
                "balance",
            },
            {"invoice_settings": {"default_payment_method"}},
        )
        metadata = _metadata(params)
        balance = _int(params, "balance", 0)
        pm = _str(params, "payment_method")
        settings = params.get("invoice_settings") or {}
        default_pm = settings.get("default_payment_method") if isinstance(settings, dict) else None
        for name, value in (
            ("payment_method", pm),
            ("invoice_settings[default_payment_method]", default_pm),
        ):
            if value is not None and value not in TEST_PAYMENT_METHODS:
                raise _no_such("PaymentMethod", value, name)
        if default_pm is not None and pm is not None and default_pm != pm:
            raise StripeError(
                400,
                "The payment method must be attached to the customer.",
                param="invoice_settings[default_payment_method]",
            )
        cus = self._new_customer(
            None, email=_str(params, "email"), name=_str(params, "name"), metadata=metadata
        )
        cus["description"] = _str(params, "description")
        cus["phone"] = _str(params, "phone")
        cus["balance"] = balance
        if default_pm is not None:
            self._set_card(cus["id"], TEST_PAYMENT_METHODS[default_pm])
            cus["invoice_settings"]["default_payment_method"] = default_pm
        return _clone(cus)

    def _retrieve_customer(self, params: dict[str, Any], cus_id: str) -> Json:
        _check_known(params, ())
        cus = self.customers.get(cus_id)
        if cus is None:
            raise _no_such("customer", cus_id, "id", 404)
        return _clone(cus)

    def _delete_customer(self, params: dict[str, Any], cus_id: str) -> Json:
        _check_known(params, ())
        self._customer(cus_id, "id")
        self.delete_customer(cus_id)
        return {"id": cus_id, "object": "customer", "deleted": True}

    # ------------------------------------------------------------ invoices

    def _create_invoice(self, params: dict[str, Any]) -> Json:
        _check_known(
            params,
            {
                "customer",
                "collection_method",
                "auto_advance",
                "currency",
                "description",
                "metadata",
                "pending_invoice_items_behavior",
                "days_until_due",
                "due_date",
                "footer",
                "statement_descriptor",
                "discounts",
            },
        )
        cus = self._customer(_str(params, "customer"))
        method = _enum(
            params,
            "collection_method",
            ("charge_automatically", "send_invoice"),
            "charge_automatically",
        )
        pending = _enum(params, "pending_invoice_items_behavior", ("exclude", "include"), "exclude")
        due_date = self._due_date(params, method)
        currency = _currency(params) or cus.get("currency") or "usd"
        inv = self._new_invoice(cus, currency, method, _metadata(params))
        inv["auto_advance"] = bool(_bool(params, "auto_advance", False))
        inv["description"] = _str(params, "description")
        inv["footer"] = _str(params, "footer")
        inv["statement_descriptor"] = _str(params, "statement_descriptor")
        inv["due_date"] = due_date
        inv["discounts"] = self._invoice_discounts(params, cus)
        if inv["auto_advance"]:
            inv["automatically_finalizes_at"] = inv["created"] + 3600
        if pending == "include":
            for item in self._pending_items(cus["id"], currency):
                self._attach_item(inv, item)
        self._touch(inv)
        return self._render_invoice(inv, params)

    def _due_date(self, params: dict[str, Any], method: str) -> int | None:
        days = _int(params, "days_until_due")
        due = _int(params, "due_date")
        if method == "charge_automatically":
            for name, value in (("days_until_due", days), ("due_date", due)):
                if value is not None:
                    raise StripeError(
                        400,
                        f"Invalid {name}: {name} can only be set when "
                        "collection_method=send_invoice",
                        param=name,
                    )
            return None
        if days is None and due is None:
            raise _missing("days_until_due")
        return due if due is not None else self._now() + 86400 * (days or 0)

    def _new_invoice(self, cus: Json, currency: str, method: str, metadata: dict[str, str]) -> Json:
        inv_id = self._new_id("in_")
        now = self._now()
        inv: Json = {
            "id": inv_id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Stripe fake",
            "account_tax_ids": None,
            "amount_due": 0,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": False,
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "automatically_finalizes_at": None,
            "billing_reason": "manual",
            "collection_method": method,
            "confirmation_secret": None,
            "created": now,
            "currency": currency,
            "custom_fields": None,
            "customer": cus["id"],
            "customer_address": None,
            "customer_email": cus.get("email"),
            "customer_name": cus.get("name"),
            "customer_phone": None,
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [],
            "due_date": None,
            "effective_at": None,
            "ending_balance": None,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": f"/v1/invoices/{inv_id}/lines",
            },
            "livemode": False,
            "metadata": metadata,
            "next_payment_attempt": None,
            "number": None,
            "on_behalf_of": None,
            "parent": None,
            "payment_settings": {
                "default_mandate": None,
                "payment_method_options": None,
                "payment_method_types": None,
            },
            "period_end": now,
            "period_start": now,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": "draft",
            "status_details": None,
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": 0,
            "subtotal_excluding_tax": 0,
            "test_clock": None,
            "threshold_reason": None,
            "total": 0,
            "total_discount_amounts": [],
            "total_excluding_tax": 0,
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": now,
        }
        self.invoices[inv_id] = inv
        self._remember(inv)
        return inv

    def _retrieve_invoice(self, params: dict[str, Any], inv_id: str) -> Json:
        _check_known(params, ())
        return self._render_invoice(self._invoice(inv_id), params)

    def _update_invoice(self, params: dict[str, Any], inv_id: str) -> Json:
        _check_known(
            params,
            {
                "metadata",
                "description",
                "auto_advance",
                "footer",
                "collection_method",
                "days_until_due",
                "due_date",
                "discounts",
            },
        )
        inv = self._invoice(inv_id)
        if inv["status"] in ("paid", "void") and set(params) - {"metadata", "expand"}:
            raise StripeError(
                400,
                f"You can only update the metadata of a {inv['status']} invoice.",
                code="invoice_not_editable",
                saved=True,
            )
        draft_only = {"collection_method", "days_until_due", "due_date", "discounts"}
        if inv["status"] != "draft" and set(params) & draft_only:
            raise StripeError(
                400,
                f"You can only change {', '.join(sorted(set(params) & draft_only))} of a draft "
                "invoice.",
                code="invoice_not_editable",
                saved=True,
            )
        if "collection_method" in params or "days_until_due" in params or "due_date" in params:
            method = _enum(
                params,
                "collection_method",
                ("charge_automatically", "send_invoice"),
                inv["collection_method"],
            )
            inv["due_date"] = self._due_date(params, method)
            inv["collection_method"] = method
        if "discounts" in params:
            inv["discounts"] = self._invoice_discounts(params, self.customers[inv["customer"]])
            self._recompute_totals(inv)
        inv["metadata"] = _metadata(params, inv["metadata"])
        for name in ("description", "footer"):
            if name in params:
                inv[name] = _str(params, name) or None
        if "auto_advance" in params:
            inv["auto_advance"] = bool(_bool(params, "auto_advance"))
        self._touch(inv)
        return self._render_invoice(inv, params)

    def _delete_invoice(self, params: dict[str, Any], inv_id: str) -> Json:
        _check_known(params, ())
        inv = self._invoice(inv_id)
        if inv["status"] != "draft":
            raise StripeError(
                400,
                "You can only delete draft invoices. Void the invoice instead.",
                code="invoice_not_editable",
                saved=True,
            )
        for line in inv["lines"]["data"]:
            self.invoice_items.pop(line["parent"]["invoice_item_details"]["invoice_item"], None)
        del self.invoices[inv_id]
        self._search_versions.pop(inv_id, None)
        return {"id": inv_id, "object": "invoice", "deleted": True}

    def _sorted_invoices(self) -> list[Json]:
        return sorted(
            self.invoices.values(), key=lambda i: (i["created"], self._order[i["id"]]), reverse=True
        )

    def _list_invoices(self, params: dict[str, Any]) -> Json:
        _check_known(
            params,
            {
                "customer",
                "status",
                "collection_method",
                "created",
                "limit",
                "starting_after",
                "ending_before",
            },
            {"created": {"gt", "gte", "lt", "lte"}},
        )
        filters = {k: _str(params, k) for k in ("customer", "status", "collection_method")}
        created = params.get("created")
        bounds: dict[str, int] = {}
        if isinstance(created, dict):
            bounds = {op: _int(created, op) or 0 for op in created}
        elif created is not None:
            bounds = {"eq": _int(params, "created") or 0}
        compare = {
            "gt": lambda a, b: a > b,
            "gte": lambda a, b: a >= b,
            "lt": lambda a, b: a < b,
            "lte": lambda a, b: a <= b,
            "eq": lambda a, b: a == b,
        }
        objs = [
            i
            for i in self._sorted_invoices()
            if all(v is None or i[k] == v for k, v in filters.items())
            and all(compare[op](i["created"], b) for op, b in bounds.items())
        ]
        page = self._paginate(objs, params, "/v1/invoices", "invoice")
        # A list expands its objects' fields as `data.<field>`.
        expand = params.get("expand") or []
        inner = []
        for name in expand if isinstance(expand, list) else [expand]:
            if not str(name).startswith("data."):
                raise StripeError(
                    400, f"This property cannot be expanded ({name}).", param="expand"
                )
            inner.append(str(name).removeprefix("data."))
        page["data"] = [self._render_invoice(i, {"expand": inner}) for i in page["data"]]
        return page

    def _search_invoices(self, params: dict[str, Any]) -> Json:
        _check_known(params, {"query", "limit", "page"})
        query = _str(params, "query")
        if not query:
            raise _missing("query")
        join, clauses = parse_search_query(query)
        limit = _limit(params)
        page = _str(params, "page")
        offset = int(page.removeprefix("page_")) if page and page[5:].isdigit() else 0
        combine = all if join == "AND" else any
        hits = [
            inv
            for inv in self._searchable_invoices()
            if combine(_clause_matches(c, inv) for c in clauses)
        ]
        data = hits[offset : offset + limit]
        more = len(hits) > offset + limit
        return {
            "object": "search_result",
            "data": [self._render_invoice(i) for i in data],
            "has_more": more,
            "next_page": f"page_{offset + limit}" if more else None,
            "url": "/v1/invoices/search",
        }

    def _searchable_invoices(self) -> list[Json]:
        """Latest version of each invoice that the (lagging) index has caught up with."""
        out = []
        for versions in self._search_versions.values():
            visible = [snap for since, snap in versions if since <= self._tick]
            if visible:
                out.append(visible[-1])
        out.sort(key=lambda i: (i["created"], self._order.get(i["id"], 0)), reverse=True)
        return out

    def _list_lines(self, params: dict[str, Any], inv_id: str) -> Json:
        _check_known(params, {"limit", "starting_after", "ending_before"})
        inv = self._invoice(inv_id)
        lines = _clone(inv["lines"]["data"])
        return self._paginate(lines, params, f"/v1/invoices/{inv_id}/lines", "line item")

    # ------------------------------------------------------------ finalize / pay / void

    def _finalize(self, params: dict[str, Any], inv_id: str) -> Json:
        _check_known(params, {"auto_advance"})
        inv = self._invoice(inv_id)
        if inv["status"] != "draft":
            raise StripeError(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
                saved=True,
            )
        self._customer(inv["customer"], "customer")
        if "auto_advance" in params:
            inv["auto_advance"] = bool(_bool(params, "auto_advance"))
        # Finalizing does not pay: money moves on /pay, or when automatic collection
        # gets to it (run_automatic_collection).
        self._do_finalize(inv, charge=False)
        return self._render_invoice(inv, params)

    def _do_finalize(self, inv: Json, *, charge: bool) -> None:
        cus = self.customers[inv["customer"]]
        now = self._now()
        inv["number"] = f"{cus['invoice_prefix']}-{cus['next_invoice_sequence']:04d}"
        cus["next_invoice_sequence"] += 1
        start = cus.get("balance", 0)
        inv["starting_balance"] = start
        inv["amount_due"] = max(inv["total"] + start, 0)
        inv["ending_balance"] = inv["total"] + start - inv["amount_due"]
        cus["balance"] = inv["ending_balance"]
        inv["amount_remaining"] = inv["amount_due"]
        inv["status"] = "open"
        inv["effective_at"] = now
        inv["automatically_finalizes_at"] = None
        inv["status_transitions"]["finalized_at"] = now
        inv["hosted_invoice_url"] = f"https://invoice.stripe.test/i/{inv['id']}"
        inv["invoice_pdf"] = f"https://pay.stripe.test/invoice/{inv['id']}/pdf"
        if cus.get("currency") is None:
            cus["currency"] = inv["currency"]
        self._emit("invoice.finalized", inv)
        if inv["amount_due"] == 0:
            self._mark_paid(inv, amount=0)
        elif charge and inv["auto_advance"] and inv["collection_method"] == "charge_automatically":
            with contextlib.suppress(StripeError):  # finalize succeeds; invoice stays open
                self._attempt_payment(inv, automatic=True)
        self._touch(inv)

    def _mark_paid(self, inv: Json, *, amount: int) -> None:
        inv["status"] = "paid"
        inv["amount_paid"] = amount
        inv["amount_remaining"] = 0
        inv["auto_advance"] = False
        inv["next_payment_attempt"] = None
        inv["status_transitions"]["paid_at"] = self._now()
        self._emit("invoice.paid", inv)

    def _attempt_payment(self, inv: Json, *, automatic: bool = False) -> None:
        """Charge the customer's default payment method; StripeError(402) on a decline.
        ``attempt_count`` counts as Stripe does: the first attempt, then only automatic
        retries ("manual payment attempts after the first attempt do not affect the retry
        schedule", Invoice.attempt_count in stripe-python)."""
        cus_id = inv["customer"]
        due = inv["amount_remaining"]
        if cus_id in self._no_payment_method:
            raise StripeError(400, NO_PAYMENT_METHOD, saved=True)
        inv["attempted"] = True
        if automatic or inv["attempt_count"] == 0:
            inv["attempt_count"] += 1
        if 0 < due < self.minimum_charge.get(inv["currency"], 50):
            # below Stripe's minimum charge: marked paid, the amount goes on the balance
            cus = self.customers[cus_id]
            cus["balance"] = cus.get("balance", 0) + due
            inv["ending_balance"] = (inv["ending_balance"] or 0) + due
            self._mark_paid(inv, amount=0)
            return
        decline = self._cards.get(cus_id)
        if decline is not None:
            inv["next_payment_attempt"] = self._now() + 3 * 86400 if inv["auto_advance"] else None
            self._touch(inv)
            self._emit("invoice.payment_failed", inv)
            raise StripeError(
                402,
                "Your card was declined."
                if decline == "generic_decline"
                else "Your card has insufficient funds.",
                type_="card_error",
                code="card_declined",
                saved=True,
                extra={"decline_code": decline, "charge": self._new_id("ch_")},
            )
        self._mark_paid(inv, amount=due)

    def _pay(self, params: dict[str, Any], inv_id: str) -> Json:
        _check_known(
            params,
            {"paid_out_of_band", "forgive", "off_session", "payment_method", "source", "mandate"},
        )
        inv = self._invoice(inv_id)
        self.pay_attempts.append(
            PayAttempt(
                self.moment,
                inv_id,
                inv["status"],
                self._status_moment.get(inv_id, 0),
                inv["metadata"].get("tokens_bill_id"),
            )
        )
        self._customer(inv["customer"], "customer")
        out_of_band = bool(_bool(params, "paid_out_of_band", False))
        if inv["status"] == "paid":
            # What Stripe answers (400 invalid_request_error, "Invoice is already paid"); its
            # documented error codes (stripe-python's Invoice.last_finalization_error.code)
            # have none for it, so callers must read the invoice, not match a code.
            raise StripeError(400, "Invoice is already paid", saved=True)
        if inv["status"] == "void":
            raise StripeError(400, "This invoice can't be paid: it is void.", saved=True)
        if not out_of_band and inv["customer"] in self._no_payment_method:
            raise StripeError(400, NO_PAYMENT_METHOD, saved=True)
        if inv["status"] == "draft":
            self._do_finalize(inv, charge=False)
        if inv["status"] != "paid" and out_of_band:
            self._mark_paid(inv, amount=0)
        elif inv["status"] != "paid":
            self._attempt_payment(inv)
        self._touch(inv)
        return self._render_invoice(inv, params)

    def _void(self, params: dict[str, Any], inv_id: str) -> Json:
        _check_known(params, ())
        inv = self._invoice(inv_id)
        if inv["status"] not in ("open", "uncollectible"):
            raise StripeError(
                400,
                f"You can only void open or uncollectible invoices; this one is '{inv['status']}'.",
                code="invoice_not_editable",
                saved=True,
            )
        inv["status"] = "void"
        inv["auto_advance"] = False
        inv["amount_remaining"] = 0
        inv["status_transitions"]["voided_at"] = self._now()
        self._touch(inv)
        self._emit("invoice.voided", inv)
        return self._render_invoice(inv, params)

    def _mark_uncollectible(self, params: dict[str, Any], inv_id: str) -> Json:
        _check_known(params, ())
        inv = self._invoice(inv_id)
        if inv["status"] != "open":
            raise StripeError(
                400,
                f"You can only mark open invoices uncollectible; this one is '{inv['status']}'.",
                code="invoice_not_editable",
                saved=True,
            )
        inv["status"] = "uncollectible"
        inv["auto_advance"] = False
        inv["next_payment_attempt"] = None
        inv["status_transitions"]["marked_uncollectible_at"] = self._now()
        self._touch(inv)
        self._emit("invoice.marked_uncollectible", inv)
        return self._render_invoice(inv, params)

    # ------------------------------------------------------------ invoice items

    def _create_item(self, params: dict[str, Any]) -> Json:
        _check_known(
            params,
            {
                "customer",
                "invoice",
                "amount",
                "currency",
                "description",
                "metadata",
                "period",
                "quantity",
                "quantity_decimal",
                "unit_amount_decimal",
                "price_data",
                "pricing",
                "discountable",
                "tax_behavior",
                "tax_code",
                "tax_rates",
                "subscription",
            },
            {
                "period": {"start", "end"},
                "price_data": {
                    "currency",
                    "product",
                    "unit_amount",
                    "unit_amount_decimal",
                    "tax_behavior",
                },
                "pricing": {"price"},
            },
        )
        cus, inv = self._item_owner(params)
        currency = self._item_currency(params, inv)
        amount, quantity, unit = self._item_amount(params)
        period = self._item_period(params)
        metadata = _metadata(params)
        item: Json = {
            "id": self._new_id("ii_"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": cus["id"],
            "date": self._now(),
            "description": _str(params, "description"),
            "discountable": bool(_bool(params, "discountable", amount >= 0)),
            "discounts": [],
            "invoice": None,
            "livemode": False,
            "metadata": metadata,
            "net_amount": amount,
            "parent": None,
            "period": period,
            "pricing": {"price_details": None, "type": None, "unit_amount_decimal": unit},
            "proration": False,
            "proration_details": {"credited_items": None},
            "quantity": int(quantity),
            "quantity_decimal": str(quantity),
            "tax_rates": [],
            "test_clock": None,
        }
        self.invoice_items[item["id"]] = item
        self._remember(item)
        if inv is not None:
            self._attach_item(inv, item)
            self._touch(inv)
        return self._expand(
            _clone(item), params, {"customer": self.customers, "invoice": self.invoices}
        )

    def _item_owner(self, params: dict[str, Any]) -> tuple[Json, Json | None]:
        inv_id = _str(params, "invoice")
        cus_id = _str(params, "customer")
        inv = self._invoice(inv_id, "invoice", 400) if inv_id else None
        if inv is not None:
            if cus_id is not None and cus_id != inv["customer"]:
                raise StripeError(
                    400,
                    f"The invoice {inv['id']} belongs to customer {inv['customer']}, not {cus_id}.",
                    param="invoice",
                )
            if inv["status"] != "draft":
                raise StripeError(
                    400,
                    f"You can only add invoice items to draft invoices; "
                    f"invoice {inv['id']} is '{inv['status']}'.",
                    code="invoice_not_editable",
                    saved=True,
                    param="invoice",
                )
            if len(inv["lines"]["data"]) >= 250:
                raise StripeError(
                    400, "An invoice can have at most 250 invoice items.", param="invoice"
                )
            cus_id = inv["customer"]
        return self._customer(cus_id), inv

    def _item_currency(self, params: dict[str, Any], inv: Json | None) -> str:
        price_data = params.get("price_data")
        currency = _currency(params)
        if isinstance(price_data, dict) and price_data.get("currency"):
            currency = currency or _currency(price_data, "currency")
        if currency is None:
            if inv is None:
                raise _missing("currency")
            return str(inv["currency"])
        if inv is not None and currency != inv["currency"]:
            raise StripeError(
                400,
                f"The currency of the invoice item ({currency}) must match "
                f"the currency of the invoice ({inv['currency']}).",
                param="currency",
            )
        return currency

    def _item_amount(self, params: dict[str, Any]) -> tuple[int, Decimal, str]:
        """-> (amount in cents, quantity, unit_amount_decimal as Stripe prints it)."""
        if "pricing" in params:
            price = (
                (params["pricing"] or {}).get("price", "")
                if isinstance(params["pricing"], dict)
                else ""
            )
            raise _no_such("price", price, "pricing[price]")
        quantity = self._item_quantity(params)
        unit = self._item_unit(params)
        amount = _int(params, "amount")
        if amount is not None:
            if unit is not None:
                raise StripeError(
                    400,
                    "You may only specify one of these parameters: amount, "
                    "price_data, unit_amount_decimal.",
                    param="amount",
                )
            if quantity != 1:
                raise StripeError(
                    400,
                    "You cannot pass quantity together with amount: the "
                    "amount is the line's total.",
                    param="quantity",
                )
            return amount, quantity, str(amount)
        if unit is None:
            raise StripeError(
                400,
                "You must specify either amount, price_data, pricing or unit_amount_decimal.",
                param="amount",
            )
        total = (quantity * unit).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return int(total), quantity, format(unit.normalize(), "f")

    @staticmethod
    def _item_quantity(params: dict[str, Any]) -> Decimal:
        if "quantity_decimal" in params:
            if "quantity" in params:
                raise StripeError(
                    400,
                    "You may only specify one of these parameters: quantity, quantity_decimal.",
                    param="quantity",
                )
            quantity = _decimal(params["quantity_decimal"], "quantity_decimal")
        else:
            quantity = Decimal(_int(params, "quantity", 1) or 0)
        if quantity < 0:
            raise StripeError(400, "Invalid quantity: must be non-negative", param="quantity")
        return quantity

    @staticmethod
    def _item_unit(params: dict[str, Any]) -> Decimal | None:
        price_data = params.get("price_data")
        if price_data is not None:
            if "unit_amount_decimal" in params:
                raise StripeError(
                    400,
                    "You may only specify one of these parameters: "
                    "price_data, unit_amount_decimal.",
                    param="price_data",
                )
            if not isinstance(price_data, dict):
                raise StripeError(400, "Invalid object", param="price_data")
            for name in ("currency", "product"):
                if not price_data.get(name):
                    raise _missing(f"price_data[{name}]")
            if ("unit_amount" in price_data) == ("unit_amount_decimal" in price_data):
                raise StripeError(
                    400,
                    "Exactly one of price_data[unit_amount] and "
                    "price_data[unit_amount_decimal] must be set.",
                    param="price_data[unit_amount]",
                )
            if "unit_amount" in price_data:
                return Decimal(_int(price_data, "unit_amount") or 0)
            return _decimal(price_data["unit_amount_decimal"], "price_data[unit_amount_decimal]")
        if "unit_amount_decimal" in params:
            return _decimal(params["unit_amount_decimal"], "unit_amount_decimal")
        return None

    def _item_period(self, params: dict[str, Any]) -> Json:
        period = params.get("period")
        if period is None:
            now = self._now()
            return {"start": now, "end": now}
        if not isinstance(period, dict):
            raise StripeError(400, "Invalid object", param="period")
        start, end = _int(period, "start"), _int(period, "end")
        if start is None:
            raise _missing("period[start]")
        if end is None:
            raise _missing("period[end]")
        if end < start:
            raise StripeError(
                400,
                "The period end must be greater than or equal to the period start.",
                param="period[end]",
            )
        return {"start": start, "end": end}

    def _pending_items(self, cus_id: str, currency: str) -> list[Json]:
        return [
            i
            for i in self.invoice_items.values()
            if i["customer"] == cus_id and i["invoice"] is None and i["currency"] == currency
        ]

    def _attach_item(self, inv: Json, item: Json) -> None:
        item["invoice"] = inv["id"]
        line: Json = {
            "id": self._new_id("il_"),
            "object": "line_item",
            "amount": item["amount"],
            "currency": item["currency"],
            "description": item["description"],
            "discount_amounts": [],
            "discountable": item["discountable"],
            "discounts": [],
            "invoice": inv["id"],
            "livemode": False,
            "metadata": dict(item["metadata"]),
            "parent": {
                "type": "invoice_item_details",
                "invoice_item_details": {
                    "invoice": inv["id"],
                    "invoice_item": item["id"],
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": None,
                },
                "subscription_item_details": None,
            },
            "period": dict(item["period"]),
            "pretax_credit_amounts": [],
            "pricing": _clone(item["pricing"]),
            "quantity": item["quantity"],
            "quantity_decimal": item["quantity_decimal"],
            "subscription": None,
            "subtotal": item["amount"],
            "taxes": [],
        }
        lines = inv["lines"]
        lines["data"].append(line)
        lines["total_count"] = len(lines["data"])
        self._recompute_totals(inv)

    def _invoice_discounts(self, params: dict[str, Any], cus: Json) -> list[str]:
        """`discounts` absent: the customer's discount is inherited; "": none; a list of
        {"coupon": id}: those coupons."""
        value = params.get("discounts")
        if "discounts" not in params:
            discount = cus.get("discount")
            return [discount["id"]] if discount else []
        if value == "":
            return []
        if not isinstance(value, list):
            raise StripeError(400, "Invalid array", param="discounts")
        out = []
        for entry in value:
            coupon = entry.get("coupon") if isinstance(entry, dict) else None
            if coupon not in self._coupons:
                raise _no_such("coupon", str(coupon), "discounts")
            did = self._new_id("di_", 14)
            self._discounts_by_id[did] = coupon
            out.append(did)
        return out

    def _coupon_of(self, discount_id: str) -> Json | None:
        for cus in self.customers.values():
            d = cus.get("discount")
            if d and d["id"] == discount_id:
                return dict(d["coupon"])
        coupon = self._discounts_by_id.get(discount_id)
        return self._coupons.get(coupon) if coupon else None

    def _recompute_totals(self, inv: Json) -> None:
        """subtotal = the lines; total = subtotal less the discounts on discountable lines."""
        lines = inv["lines"]["data"]
        subtotal = sum(li["amount"] for li in lines)
        discounted = 0
        amounts = []
        for discount_id in inv["discounts"]:
            coupon = self._coupon_of(discount_id)
            if coupon is None:
                continue
            base = sum(li["amount"] for li in lines if li["discountable"]) - discounted
            if coupon.get("percent_off"):
                off = int(
                    (Decimal(base) * Decimal(coupon["percent_off"]) / 100).quantize(
                        Decimal(1), rounding=ROUND_HALF_UP
                    )
                )
            else:
                off = min(int(coupon.get("amount_off") or 0), base)
            discounted += off
            amounts.append({"amount": off, "discount": discount_id})
        inv["total_discount_amounts"] = amounts
        total = subtotal - discounted
        for name in ("subtotal", "subtotal_excluding_tax"):
            inv[name] = subtotal
        for name in ("total", "total_excluding_tax", "amount_due", "amount_remaining"):
            inv[name] = total

    def _retrieve_item(self, params: dict[str, Any], item_id: str) -> Json:
        _check_known(params, ())
        item = self.invoice_items.get(item_id)
        if item is None:
            raise _no_such("invoiceitem", item_id, "id", 404)
        return self._expand(
            _clone(item), params, {"customer": self.customers, "invoice": self.invoices}
        )

    def _editable_item(self, item_id: str) -> tuple[Json, Json | None]:
        item = self.invoice_items.get(item_id)
        if item is None:
            raise _no_such("invoiceitem", item_id, "id", 404)
        inv = self.invoices.get(item["invoice"]) if item["invoice"] else None
        if inv is not None and inv["status"] != "draft":
            raise StripeError(
                400,
                f"Invoice items on invoice {inv['id']} can't be changed: it is no longer a draft.",
                code="invoice_not_editable",
                saved=True,
            )
        return item, inv

    def _update_item(self, params: dict[str, Any], item_id: str) -> Json:
        _check_known(params, {"amount", "description", "metadata", "discountable"})
        item, inv = self._editable_item(item_id)
        if "amount" in params:
            amount = _int(params, "amount")
            assert amount is not None
            item["amount"] = item["net_amount"] = amount
            item["pricing"]["unit_amount_decimal"] = str(amount)
        if "description" in params:
            item["description"] = _str(params, "description")
        if "discountable" in params:
            item["discountable"] = bool(_bool(params, "discountable"))
        item["metadata"] = _metadata(params, item["metadata"])
        if inv is not None:
            for line in inv["lines"]["data"]:
                if line["parent"]["invoice_item_details"]["invoice_item"] == item_id:
                    line.update(
                        amount=item["amount"],
                        subtotal=item["amount"],
                        description=item["description"],
                        discountable=item["discountable"],
                        metadata=dict(item["metadata"]),
                        pricing=_clone(item["pricing"]),
                    )
            self._recompute_totals(inv)
            self._touch(inv)
        return _clone(item)

    def _delete_item(self, params: dict[str, Any], item_id: str) -> Json:
        _check_known(params, ())
        _, inv = self._editable_item(item_id)
        del self.invoice_items[item_id]
        if inv is not None:
            lines = inv["lines"]
            lines["data"] = [
                li
                for li in lines["data"]
                if li["parent"]["invoice_item_details"]["invoice_item"] != item_id
            ]
            lines["total_count"] = len(lines["data"])
            self._recompute_totals(inv)
            self._touch(inv)
        return {"id": item_id, "object": "invoiceitem", "deleted": True}

    def _list_items(self, params: dict[str, Any]) -> Json:
        _check_known(
            params, {"customer", "invoice", "pending", "limit", "starting_after", "ending_before"}
        )
        customer, invoice = _str(params, "customer"), _str(params, "invoice")
        pending = _bool(params, "pending")
        items = sorted(
            self.invoice_items.values(),
            key=lambda i: (i["date"], self._order[i["id"]]),
            reverse=True,
        )
        items = [
            i
            for i in items
            if (customer is None or i["customer"] == customer)
            and (invoice is None or i["invoice"] == invoice)
            and (pending is None or (i["invoice"] is None) == pending)
        ]
        page = self._paginate(items, params, "/v1/invoiceitems", "invoiceitem")
        page["data"] = _clone(page["data"])
        return page

    # ------------------------------------------------------------ subscriptions
    # Read-only, for the webhook handler that reads a subscription's current state;
    # tests shape them with add_subscription / update_subscription.

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
