"""Customers (create, retrieve, delete) and their payment methods: Stripe test mode's
``pm_card_*`` ids, a card that declines, no payment method at all.
"""

from __future__ import annotations

import string
from typing import Any

from testing.stripe.discounts import Discounts
from testing.stripe.errors import StripeError, _no_such
from testing.stripe.params import _check_known, _clone, _int, _metadata, _str
from testing.stripe.shapes import Json

# Test payment methods, as in Stripe test mode: id -> decline code (None: the card works)
TEST_PAYMENT_METHODS: dict[str, str | None] = {
    "pm_card_visa": None,
    "pm_card_mastercard": None,
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_visa_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeCustomerFail": "generic_decline",
}


class Customers(Discounts):
    """``/v1/customers`` and the Dashboard's hand on customers."""

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

    def remove_payment_method(self, customer: str) -> None:
        """The customer's default card goes away (detached in the Dashboard)."""
        self._cards.pop(customer, None)
        self._no_payment_method.add(customer)
        self.customers[customer]["invoice_settings"]["default_payment_method"] = None

    def set_card_declines(self, customer: str, declines: bool | str = True) -> None:
        decline = (
            declines if isinstance(declines, str) else ("generic_decline" if declines else None)
        )
        self._set_card(customer, decline)

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
