"""The Stripe fake, exercised through stripe-python's async client (as production calls it)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import stripe
from stripe._http_client import HTTPClient

from testing.stripe import StripeFake, parse_form

BASE = "https://api.stripe.test"
KEY = "sk_test_fake"


@pytest.fixture(autouse=True)
def no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """stripe-python sleeps 0.5 s or more between retries; the tests need not."""
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.0)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.0)


def make_client(retries: int, key: str = KEY, base: str = BASE) -> stripe.StripeClient:
    return stripe.StripeClient(
        key,
        base_addresses={"api": base},
        http_client=stripe.HTTPXClient(),
        max_network_retries=retries,
    )


@pytest.fixture(params=[0, 2], ids=["retries0", "retries2"])
def client(request: pytest.FixtureRequest) -> stripe.StripeClient:
    return make_client(request.param)


async def make_bill(
    client: stripe.StripeClient, customer: str, amount: int, key: str, **invoice: Any
) -> stripe.Invoice:
    """The reconciler's three steps, each with its own idempotency key."""
    inv = await client.v1.invoices.create_async(
        {
            "customer": customer,
            "collection_method": "charge_automatically",
            "auto_advance": True,
            "currency": "usd",
            "description": "Additional tokens",
            "metadata": {"team": "t1", "bill_id": key},
            **invoice,
        },
        {"idempotency_key": f"{key}:invoice"},
    )
    await client.v1.invoice_items.create_async(
        {
            "customer": customer,
            "invoice": inv.id,
            "amount": amount,
            "currency": "usd",
            "description": f"{amount * 1} additional tokens",
            "period": {"start": 1_767_225_600, "end": 1_769_904_000},
            "metadata": {"team": "t1", "bill_id": key},
        },
        {"idempotency_key": f"{key}:item"},
    )
    return await client.v1.invoices.finalize_invoice_async(
        inv.id, {}, {"idempotency_key": f"{key}:finalize"}
    )


# ---------------------------------------------------------------- the happy path


async def test_finalize_does_not_pay_automatic_collection_does(
    stripe_fake: StripeFake, client: stripe.StripeClient
) -> None:
    cus = stripe_fake.add_customer(email="admin@example.com")
    inv = await make_bill(client, cus, 5_000, "bill-1")

    assert isinstance(inv, stripe.Invoice)
    assert inv.id.startswith("in_")
    # Finalizing does not charge: money moves on /pay or by automatic collection.
    assert inv.status == "open" and inv.amount_paid == 0 and inv.attempt_count == 0
    assert inv.total == inv.amount_due == inv.amount_remaining == 5_000
    stripe_fake.run_automatic_collection()  # Stripe gets to it, about an hour later
    inv = await client.v1.invoices.retrieve_async(inv.id)
    assert inv.status == "paid"
    assert inv.total == inv.amount_due == inv.amount_paid == 5_000
    assert inv.amount_remaining == 0
    assert inv.number and inv.number.endswith("-0001")
    assert inv.metadata["bill_id"] == "bill-1"
    assert inv.livemode is False
    line = inv.lines.data[0]
    assert isinstance(line, stripe.InvoiceLineItem)
    assert line.amount == 5_000
    assert line.period.start == 1_767_225_600

    stored = stripe_fake.invoices[inv.id]
    assert stored["status"] == "paid"
    (item,) = stripe_fake.invoice_items.values()
    assert item["invoice"] == inv.id and item["id"].startswith("ii_")
    again = await client.v1.invoices.retrieve_async(inv.id)
    assert again.status == "paid" and again.total == 5_000
    lines = await client.v1.invoices.line_items.list_async(inv.id)
    assert [li.amount for li in lines.data] == [5_000]


async def test_quantity_times_decimal_unit_price(stripe_fake: StripeFake) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    inv = await client.v1.invoices.create_async({"customer": cus})
    item = await client.v1.invoice_items.create_async(
        {"invoice": inv.id, "quantity": 5_001, "unit_amount_decimal": "1.0"}
    )
    assert item.amount == 5_001 and item.currency == "usd"
    inv = await client.v1.invoices.retrieve_async(inv.id)
    assert inv.total == 5_001 and inv.status == "draft" and inv.auto_advance is False


async def test_finalize_without_auto_advance_leaves_it_open_until_paid(
    stripe_fake: StripeFake,
) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    inv = await make_bill(client, cus, 6_000, "b", auto_advance=False)
    assert inv.status == "open" and inv.amount_paid == 0
    paid = await client.v1.invoices.pay_async(inv.id, {}, {"idempotency_key": "b:pay"})
    assert paid.status == "paid" and paid.amount_paid == 6_000
    with pytest.raises(stripe.InvalidRequestError, match="already paid"):
        await client.v1.invoices.pay_async(inv.id, {}, {"idempotency_key": "b:pay2"})


async def test_pending_items_are_excluded_by_default(stripe_fake: StripeFake) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    await client.v1.invoice_items.create_async({"customer": cus, "amount": 700, "currency": "usd"})
    excluded = await client.v1.invoices.create_async({"customer": cus})
    assert excluded.total == 0 and excluded.lines.data == []
    included = await client.v1.invoices.create_async(
        {"customer": cus, "pending_invoice_items_behavior": "include"}
    )
    assert included.total == 700


async def test_tiny_invoice_is_marked_paid_and_carried_on_the_balance(
    stripe_fake: StripeFake,
) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    small = await make_bill(client, cus, 30, "small")
    small = await client.v1.invoices.pay_async(small.id, {}, {"idempotency_key": "small:pay"})
    assert small.status == "paid" and small.amount_paid == 0
    assert stripe_fake.customers[cus]["balance"] == 30
    big = await make_bill(client, cus, 5_000, "big")
    assert big.starting_balance == 30
    big = await client.v1.invoices.pay_async(big.id, {}, {"idempotency_key": "big:pay"})
    assert big.amount_paid == 5_030 and stripe_fake.customers[cus]["balance"] == 0


# ---------------------------------------------------------------- idempotency


async def test_idempotent_replay_returns_the_same_object(
    stripe_fake: StripeFake, client: stripe.StripeClient
) -> None:
    cus = stripe_fake.add_customer()
    params: Any = {"customer": cus, "metadata": {"team": "t1"}}
    first = await client.v1.invoices.create_async(params, {"idempotency_key": "k1"})
    second = await client.v1.invoices.create_async(params, {"idempotency_key": "k1"})
    assert second.id == first.id
    assert len(stripe_fake.invoices) == 1
    assert second.last_response.headers.get("Idempotent-Replayed") == "true"
    assert first.last_response.headers.get("Idempotent-Replayed") is None

    item = {"invoice": first.id, "amount": 100, "currency": "usd"}
    a = await client.v1.invoice_items.create_async(item, {"idempotency_key": "i1"})
    b = await client.v1.invoice_items.create_async(item, {"idempotency_key": "i1"})
    assert a.id == b.id and len(stripe_fake.invoice_items) == 1
    assert stripe_fake.invoices[first.id]["total"] == 100
    assert len(stripe_fake.executed) == 2


async def test_same_key_other_params_or_endpoint_is_an_idempotency_error(
    stripe_fake: StripeFake, client: stripe.StripeClient
) -> None:
    cus = stripe_fake.add_customer()
    await client.v1.invoices.create_async(
        {"customer": cus, "description": "a"}, {"idempotency_key": "k"}
    )
    with pytest.raises(stripe.IdempotencyError) as exc:
        await client.v1.invoices.create_async(
            {"customer": cus, "description": "b"}, {"idempotency_key": "k"}
        )
    assert exc.value.http_status == 400
    with pytest.raises(stripe.IdempotencyError, match="same endpoint"):
        await client.v1.customers.create_async({}, {"idempotency_key": "k"})
    assert len(stripe_fake.invoices) == 1
    assert len(stripe_fake.customers) == 1


async def test_validation_errors_are_not_saved_under_the_key(stripe_fake: StripeFake) -> None:
    client = make_client(0)
    params: Any = {"customer": "cus_later"}
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.invoices.create_async(params, {"idempotency_key": "k"})
    stripe_fake.add_customer("cus_later")
    inv = await client.v1.invoices.create_async(params, {"idempotency_key": "k"})
    assert inv.customer == "cus_later"


async def test_a_500_is_saved_and_replayed_for_the_same_key(stripe_fake: StripeFake) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    stripe_fake.fail_next("create_invoice")
    with pytest.raises(stripe.APIError) as exc:
        await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})
    assert exc.value.http_status == 500
    # the same key replays the 500, even though the fault was one-shot
    with pytest.raises(stripe.APIError) as exc:
        await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})
    assert exc.value.headers and exc.value.headers.get("Idempotent-Replayed") == "true"
    assert stripe_fake.invoices == {}
    # a new key runs the endpoint
    inv = await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k2"})
    assert list(stripe_fake.invoices) == [inv.id]


async def test_stripe_python_retries_a_500_with_the_same_key_and_gets_the_replay(
    stripe_fake: StripeFake,
) -> None:
    client = make_client(2)
    cus = stripe_fake.add_customer()
    stripe_fake.fail_next("POST /v1/invoices")
    with pytest.raises(stripe.APIError):
        await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})
    calls = stripe_fake.calls("create_invoice")
    assert [c.idempotency_key for c in calls] == ["k", "k", "k"]
    assert stripe_fake.invoices == {} and stripe_fake.executed == []


async def test_lost_response_then_retry_with_the_same_key_returns_what_was_created(
    stripe_fake: StripeFake,
) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    stripe_fake.lose_response_next("create_invoice")
    with pytest.raises(stripe.APIConnectionError):
        await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})
    (created,) = stripe_fake.invoices
    inv = await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})
    assert inv.id == created
    assert len(stripe_fake.invoices) == 1


async def test_client_retries_reuse_the_key_after_a_lost_response(
    stripe_fake: StripeFake,
) -> None:
    client = make_client(2)
    cus = stripe_fake.add_customer()
    inv = await client.v1.invoices.create_async({"customer": cus})
    stripe_fake.lose_response_next("/v1/invoices/*/finalize")
    fin = await client.v1.invoices.finalize_invoice_async(inv.id)  # no explicit key
    assert fin.status == "paid"
    keys = [c.idempotency_key for c in stripe_fake.calls("finalize")]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    assert fin.last_response.headers.get("Idempotent-Replayed") == "true"
    assert len(stripe_fake.calls("pay")) == 0


async def test_timeouts_are_retried_by_the_client_with_the_same_key(
    stripe_fake: StripeFake,
) -> None:
    cus = stripe_fake.add_customer()
    stripe_fake.timeout_next("create_invoice")
    with pytest.raises(stripe.APIConnectionError):
        await make_client(0).v1.invoices.create_async({"customer": cus})
    assert stripe_fake.invoices == {}

    stripe_fake.timeout_next("create_invoice")
    stripe_fake.timeout_next("create_invoice")
    inv = await make_client(2).v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})
    assert list(stripe_fake.invoices) == [inv.id]
    assert [c.idempotency_key for c in stripe_fake.calls("create_invoice")][-3:] == ["k"] * 3


async def test_expired_keys_make_a_new_object(
    stripe_fake: StripeFake, client: stripe.StripeClient
) -> None:
    cus = stripe_fake.add_customer()
    first = await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})
    stripe_fake.expire_idempotency_keys()
    second = await client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": "k"})
    assert second.id != first.id
    assert len(stripe_fake.invoices) == 2


async def test_a_key_in_flight_gets_409_and_the_client_retry_gets_the_replay(
    stripe_fake: StripeFake,
) -> None:
    cus = stripe_fake.add_customer()
    hold = stripe_fake.hold_next("create_invoice")  # the first request stays in flight

    async def create(retries: int) -> Any:
        try:
            return await make_client(retries).v1.invoices.create_async(
                {"customer": cus}, {"idempotency_key": "k"}
            )
        except stripe.APIError as exc:
            return exc

    first = asyncio.create_task(create(2))
    await hold.arrived.wait()
    fast = await create(0)  # the same key while the first is still running at Stripe
    hold.release()
    slow = await first
    assert isinstance(fast, stripe.APIError) and fast.http_status == 409
    assert fast.json_body and fast.json_body["error"]["code"] == "idempotency_key_in_use"
    assert isinstance(slow, stripe.Invoice)
    assert list(stripe_fake.invoices) == [slow.id]
    after = await make_client(0).v1.invoices.create_async(
        {"customer": cus}, {"idempotency_key": "k"}
    )
    assert after.id == slow.id


async def test_latency_delays_every_request_and_requests_overlap() -> None:
    async with StripeFake(latency=0.1) as fake:
        cus = fake.add_customer()
        client = fake.client()
        loop = asyncio.get_running_loop()
        started = loop.time()
        invoices = await asyncio.gather(
            *(
                client.v1.invoices.create_async({"customer": cus}, {"idempotency_key": f"k{n}"})
                for n in range(10)
            )
        )
        elapsed = loop.time() - started
        assert 0.1 <= elapsed < 0.5  # ten at once: one round trip, not ten
        assert len({i.id for i in invoices}) == 10 and len(fake.invoices) == 10
        fake.timeout_next("retrieve_invoice")  # faults still apply, after the round trip
        with pytest.raises(stripe.APIConnectionError):
            await client.v1.invoices.retrieve_async(invoices[0].id)


# ---------------------------------------------------------------- errors


async def test_unknown_customer_is_resource_missing(
    stripe_fake: StripeFake, client: stripe.StripeClient
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.invoices.create_async({"customer": "cus_nope"})
    assert exc.value.code == "resource_missing" and exc.value.http_status == 400
    assert exc.value.param == "customer"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.customers.retrieve_async("cus_nope")
    assert exc.value.code == "resource_missing" and exc.value.http_status == 404
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.invoices.retrieve_async("in_nope")
    assert exc.value.code == "resource_missing"


async def test_deleted_customer(stripe_fake: StripeFake) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    stripe_fake.delete_customer(cus)
    got = await client.v1.customers.retrieve_async(cus)
    assert got.to_dict().get("deleted") is True
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.invoices.create_async({"customer": cus})
    assert exc.value.code == "resource_missing"


async def test_deleting_a_customer_cancels_its_subscriptions_and_leaves_its_invoices(
    stripe_fake: StripeFake,
) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer(payment_method=False)
    sub = stripe_fake.add_subscription(cus, team="acme", price="price_x")
    inv = await client.v1.invoices.create_async({"customer": cus})
    await client.v1.invoice_items.create_async(
        {"customer": cus, "invoice": inv.id, "amount": 500, "currency": "usd"}
    )
    await client.v1.invoices.update_async(
        inv.id, {"collection_method": "send_invoice", "days_until_due": 7}
    )
    await client.v1.invoices.finalize_invoice_async(inv.id)
    stripe_fake.take_events()
    await client.v1.customers.delete_async(cus)
    assert [e["type"] for e in stripe_fake.take_events()] == [
        "customer.subscription.deleted",
        "customer.deleted",
    ]
    assert stripe_fake.subscriptions[sub["id"]]["status"] == "canceled"
    got = await client.v1.invoices.retrieve_async(inv.id, {"expand": ["customer"]})
    assert got.status == "open" and got.customer.to_dict() == {
        "id": cus,
        "object": "customer",
        "deleted": True,
    }
    listed = await client.v1.invoices.list_async({"expand": ["data.customer"]})
    assert [i.customer.deleted for i in listed.data] == [True]
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.invoices.list_async({"expand": ["customer"]})


async def test_declined_card_is_a_card_error_on_pay(
    stripe_fake: StripeFake, client: stripe.StripeClient
) -> None:
    cus = stripe_fake.add_customer(card_declines=True)
    inv = await make_bill(client, cus, 5_000, "b")
    assert inv.status == "open" and not inv.attempted and inv.attempt_count == 0

    with pytest.raises(stripe.CardError) as exc:
        await client.v1.invoices.pay_async(inv.id, {}, {"idempotency_key": "b:pay:1"})
    err = exc.value
    assert err.http_status == 402 and err.code == "card_declined"
    assert err.json_body and err.json_body["error"]["decline_code"] == "generic_decline"
    assert err.json_body["error"]["type"] == "card_error"
    assert stripe_fake.invoices[inv.id]["status"] == "open"

    # the decline is saved under its key: fixing the card needs a new key
    stripe_fake.set_card_declines(cus, False)
    with pytest.raises(stripe.CardError):
        await client.v1.invoices.pay_async(inv.id, {}, {"idempotency_key": "b:pay:1"})
    paid = await client.v1.invoices.pay_async(inv.id, {}, {"idempotency_key": "b:pay:2"})
    assert paid.status == "paid" and paid.amount_paid == 5_000


async def test_bad_api_key_is_401(stripe_fake: StripeFake) -> None:
    with pytest.raises(stripe.AuthenticationError) as exc:
        await make_client(0, key="sk_test_wrong").v1.invoices.list_async()
    assert exc.value.http_status == 401
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{BASE}/v1/invoices")
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert stripe_fake.invoices == {}


async def test_items_only_go_on_drafts_and_finalize_only_drafts(
    stripe_fake: StripeFake,
) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    inv = await make_bill(client, cus, 5_000, "b")
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.invoice_items.create_async(
            {"invoice": inv.id, "amount": 1, "currency": "usd"}
        )
    assert exc.value.http_status == 400 and exc.value.code == "invoice_not_editable"
    with pytest.raises(stripe.InvalidRequestError) as exc:
        await client.v1.invoices.finalize_invoice_async(inv.id)
    assert exc.value.http_status == 400
    assert stripe_fake.invoices[inv.id]["total"] == 5_000


async def test_unknown_and_malformed_parameters_are_refused(stripe_fake: StripeFake) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: period_start"):
        await client.v1.invoices.create_async({"customer": cus, "period_start": 1})
    inv = await client.v1.invoices.create_async({"customer": cus})
    with pytest.raises(stripe.InvalidRequestError, match="Invalid integer"):
        await client.v1.invoice_items.create_async(
            {"invoice": inv.id, "amount": "12.5", "currency": "usd"}
        )
    with pytest.raises(stripe.InvalidRequestError, match="currency"):
        await client.v1.invoice_items.create_async(
            {"invoice": inv.id, "amount": 5, "currency": "eur"}
        )
    with pytest.raises(stripe.InvalidRequestError, match="maximum length of 500"):
        await client.v1.invoices.create_async({"customer": cus, "metadata": {"k": "x" * 501}})


# ---------------------------------------------------------------- reads


async def test_search_lags_writes(stripe_fake: StripeFake) -> None:
    client = make_client(0)
    stripe_fake.search_lag_calls = 2
    cus = stripe_fake.add_customer()
    inv = await client.v1.invoices.create_async(
        {"customer": cus, "auto_advance": True, "metadata": {"team": "t1", "bill_id": "b7"}}
    )
    query = {"query": "metadata['team']:'t1' AND metadata['bill_id']:'b7'"}
    first = await client.v1.invoices.search_async(query)
    second = await client.v1.invoices.search_async(query)
    third = await client.v1.invoices.search_async(query)
    assert first.data == [] and second.data == []
    assert [i.id for i in third.data] == [inv.id]
    # listing is consistent at once
    listed = await client.v1.invoices.list_async({"customer": cus})
    assert [i.id for i in listed.data] == [inv.id]

    await client.v1.invoice_items.create_async({"invoice": inv.id, "amount": 900})
    await client.v1.invoices.finalize_invoice_async(inv.id)
    stale = await client.v1.invoices.search_async(query)
    assert stale.data[0].status == "draft"  # the index has not caught up
    stripe_fake.flush_search_index()
    fresh = await client.v1.invoices.search_async(query)
    assert fresh.data[0].status == "open"
    other = await client.v1.invoices.search_async({"query": "metadata['bill_id']:'b8'"})
    assert other.data == []
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.invoices.search_async({"query": "metadata['a']:'1' AND OR"})


async def test_list_is_newest_first_and_pages(stripe_fake: StripeFake) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    other = stripe_fake.add_customer()
    ids = [(await client.v1.invoices.create_async({"customer": cus})).id for _ in range(5)]
    await client.v1.invoices.create_async({"customer": other})
    page = await client.v1.invoices.list_async({"customer": cus, "limit": 2})
    assert [i.id for i in page.data] == ids[::-1][:2] and page.has_more
    everything = [i.id async for i in page.auto_paging_iter()]
    assert everything == ids[::-1]


async def test_faults_are_one_shot_and_queued_in_order(stripe_fake: StripeFake) -> None:
    client = make_client(0)
    cus = stripe_fake.add_customer()
    inv = await client.v1.invoices.create_async({"customer": cus})
    stripe_fake.fail_next("pay", status=503)
    stripe_fake.timeout_next(("POST", "/v1/invoices/*/pay"))
    assert stripe_fake.pending_faults == [
        ("fail", "pay"),
        ("timeout", ("POST", "/v1/invoices/*/pay")),
    ]
    await client.v1.invoices.retrieve_async(inv.id)  # not a target: faults stay queued
    assert len(stripe_fake.pending_faults) == 2
    with pytest.raises(stripe.APIError):
        await client.v1.invoices.pay_async(inv.id)
    with pytest.raises(stripe.APIConnectionError):
        await client.v1.invoices.pay_async(inv.id)
    await client.v1.invoice_items.create_async({"invoice": inv.id, "amount": 5_000})
    paid = await client.v1.invoices.pay_async(inv.id)  # a draft is finalized, then charged
    assert paid.status == "paid" and paid.number
    with pytest.raises(ValueError):
        stripe_fake.fail_next("no_such_step")


async def test_custom_base_and_key() -> None:
    base = "http://localhost:12111/stripe"
    async with StripeFake(base=base, api_key="sk_test_other", now=1_767_225_600) as fake:
        cus = fake.add_customer()
        inv = await make_client(0, key="sk_test_other", base=base).v1.invoices.create_async(
            {"customer": cus}
        )
        assert inv.created == 1_767_225_600
        assert fake.requests[-1].path == "/v1/invoices"


def test_parse_form_rebuilds_nested_keys() -> None:
    parsed = parse_form(
        "customer=cus_1&metadata[team]=t1&period[start]=1&period[end]=2&expand[0]=customer"
        "&expand[1]=lines&tags[]=a&tags[]=b"
    )
    assert parsed == {
        "customer": "cus_1",
        "metadata": {"team": "t1"},
        "period": {"start": "1", "end": "2"},
        "expand": ["customer", "lines"],
        "tags": ["a", "b"],
    }
