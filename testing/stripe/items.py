"""Invoice items (create, retrieve, update, delete, list) and the lines they make on a
draft invoice (the item under ``parent.invoice_item_details``); amounts from
``amount``, ``price_data`` or ``unit_amount_decimal`` times a (decimal) quantity.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from testing.stripe.customers import Customers
from testing.stripe.errors import StripeError, _missing, _no_such
from testing.stripe.params import (
    _bool,
    _check_known,
    _clone,
    _currency,
    _decimal,
    _int,
    _metadata,
    _str,
)
from testing.stripe.shapes import Json


class Items(Customers):
    """``/v1/invoiceitems``; finance edits a draft's items in the Dashboard."""

    def edit_draft_item(self, item: str, *, amount: int | None = None) -> None:
        """Finance changes an item of a draft in the Dashboard (amount None: removes it)."""
        if amount is None:
            self._delete_item({}, item)
        else:
            self._update_item({"amount": str(amount)}, item)

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
