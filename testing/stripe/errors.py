"""Stripe's error answers: the shapes and status codes stripe-python turns into its typed
exceptions (400/401/402/404/409/429/500).
"""

from __future__ import annotations

from testing.stripe.shapes import Json


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
