"""A stateful fake of the parts of Stripe's v1 API that the billing reconciler uses.

It is mounted with respx on a base URL (default ``https://api.stripe.test``) and is
meant to be called through stripe-python::

    with StripeFake() as fake:
        cus = fake.add_customer()
        client = fake.client(max_network_retries=2)
        inv = await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})

It behaves as Stripe v1 does (API 2026-10-28), never as the code under test wishes.
One concern a module, each module one layer of the class, bottom first:

    store.py           the objects kept: ids, the clock, look-ups, expand, pagination
    events.py          the events Stripe would send to a webhook endpoint
    search.py          invoice search, on an index that lags writes
    discounts.py       coupons, discounts and an invoice's totals
    customers.py       customers and their payment methods
    items.py           invoice items and the lines they make on a draft
    invoices.py        invoices as objects: create, update, list, delete a draft
    invoice_states.py  finalize, pay, void, uncollectible; automatic collection
    subscriptions.py   subscriptions, read-only, shaped by the tests
    wire.py            routes, the API key check, the answers' headers and errors
    faults.py          injected failures, stalls, ``after_next``, the rate limiter
    idempotency.py     saved responses and their replay
    http.py            from an httpx request to the endpoint's answer
    fake.py            ``StripeFake``: start and stop, the stripe-python client

Finance's hand in the Dashboard is a method each: ``void_invoice`` (open or
uncollectible), ``mark_uncollectible`` (open), ``delete_draft`` (drafts only),
``finalize_draft``, ``remove_draft_discounts``, ``discount_draft``, ``edit_draft_item``
(also the API's ``POST``/``DELETE /v1/invoiceitems/{id}``), ``pay_in_dashboard`` (an open
or uncollectible invoice), ``delete_customer``; paying a paid invoice is a 400 "Invoice is
already paid" (no error code: Stripe documents none for it), a void one a 400.

Checked against stripe-python 16.1.0 (API 2026-10-28.endive): ``_http_client._should_retry``
retries 409, 5xx and ``Stripe-Should-Retry: true`` but not a plain 429;
``params/_invoice_create_params.py`` (``discounts``: "If not specified, inherits the
discount from the invoice's customer. Pass an empty string to avoid inheriting any
discounts"); ``params/_invoice_item_create_params.py`` (``discountable`` "Defaults to false
for prorations or negative invoice items, and true for all other invoice items");
docs.stripe.com/idempotency ("We save results only after the execution of an endpoint
begins"); docs.stripe.com/invoicing/integration/automatic-advancement-collection.
"""

from __future__ import annotations

import stripe

from testing.stripe.http import Http


class StripeFake(Http):
    """Stateful Stripe v1 fake on respx. Use as a (sync or async) context manager."""

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
