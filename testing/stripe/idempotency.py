"""Idempotency as docs.stripe.com/idempotency has it: a POST whose endpoint started running
has its first response saved (5xx and 4xx such as 402 declines, "invoice not editable",
"no payment method" included) and replayed for the same key (``Idempotent-Replayed:
true``); the same key with other parameters or on another endpoint is an
``idempotency_error``; requests refused by validation, rate limiting or a key in flight
are not saved; a key whose first request is still running gets a 409
``idempotency_key_in_use``; keys can be expired.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from testing.stripe.errors import StripeError
from testing.stripe.faults import Faults, _Fault
from testing.stripe.params import _clone
from testing.stripe.shapes import RecordedRequest, _Saved
from testing.stripe.wire import _Route


class Idempotency(Faults):
    """Saved responses under idempotency keys, and their replay."""

    def expire_idempotency_keys(self, keys: Iterable[str] | None = None) -> None:
        """Forget saved idempotency keys (all, or these), as Stripe does after ~24 h."""
        if keys is None:
            self._idem.clear()
        else:
            for key in keys:
                self._idem.pop(key, None)

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
