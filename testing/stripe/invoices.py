"""Invoices as objects: create, retrieve, update, list, delete a draft, and an invoice's
lines. How an invoice moves from draft to paid, void or uncollectible is in
invoice_states.py.
"""

from __future__ import annotations

from typing import Any

from testing.stripe.errors import StripeError, _missing
from testing.stripe.items import Items
from testing.stripe.params import (
    _bool,
    _check_known,
    _clone,
    _currency,
    _enum,
    _int,
    _metadata,
    _str,
)
from testing.stripe.shapes import Json


class Invoices(Items):
    """``/v1/invoices`` (but search, in search.py, and the status changes)."""

    def delete_draft(self, invoice: str) -> None:
        """Finance deletes a draft invoice in the Dashboard."""
        self._delete_invoice({}, invoice)

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

    def _list_lines(self, params: dict[str, Any], inv_id: str) -> Json:
        _check_known(params, {"limit", "starting_after", "ending_before"})
        inv = self._invoice(inv_id)
        lines = _clone(inv["lines"]["data"])
        return self._paginate(lines, params, f"/v1/invoices/{inv_id}/lines", "line item")
