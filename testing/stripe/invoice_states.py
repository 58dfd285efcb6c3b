"""An invoice's state machine, and money as Stripe moves it: finalizing does **not** pay.
Money moves on ``/pay``, or when Stripe's automatic collection gets to an
``auto_advance`` invoice (``run_automatic_collection``, which a test calls for "an hour
later"). Payment uses the customer's ``invoice_settings.default_payment_method`` (or
``default_source``); none is a 400 on pay for ``charge_automatically``; declines are 402
``card_error`` with a ``decline_code``; ``attempt_count`` counts the first attempt, then
only automatic retries; every pay request is recorded in ``pay_attempts``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from testing.stripe.errors import StripeError
from testing.stripe.invoices import Invoices
from testing.stripe.params import _bool, _check_known
from testing.stripe.shapes import Json, PayAttempt

NO_PAYMENT_METHOD = (
    "This customer has no attached payment source or default payment method. Please "
    "consider adding a default payment method."
)


class InvoiceStates(Invoices):
    """draft -> open -> paid | void | uncollectible, by the API, Stripe or finance."""

    def void_invoice(self, invoice: str) -> None:
        """Finance voids an open (or uncollectible) invoice in the Dashboard."""
        self._void({}, invoice)

    def mark_uncollectible(self, invoice: str) -> None:
        """Finance marks an open invoice uncollectible in the Dashboard."""
        self._mark_uncollectible({}, invoice)

    def finalize_draft(self, invoice: str) -> None:
        """Finance finalizes a draft in the Dashboard. Finalizing does not charge; an
        amount due of 0 is marked paid at once, as at Stripe."""
        self._finalize({}, invoice)

    def pay_in_dashboard(self, invoice: str) -> None:
        """The customer pays on the hosted page (or finance charges the card by hand);
        the invoice may be open or uncollectible, as at Stripe."""
        self._pay({}, invoice)

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
