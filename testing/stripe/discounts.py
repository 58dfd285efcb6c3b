"""Coupons and discounts: an invoice created without ``discounts`` inherits the customer's
coupon, ``discounts=""`` means none; invoice items are ``discountable`` unless told
otherwise; totals are the lines less the discounts on discountable lines.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from testing.stripe.errors import StripeError, _no_such
from testing.stripe.search import Search
from testing.stripe.shapes import Json


class Discounts(Search):
    """Coupons on customers and invoices, and the totals they make."""

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

    def remove_draft_discounts(self, invoice: str) -> None:
        """Finance takes the coupons off a draft invoice in the Dashboard (fixing it)."""
        inv = self.invoices[invoice]
        assert inv["status"] == "draft"
        inv["discounts"] = []
        self._recompute_totals(inv)
        self._touch(inv)

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
