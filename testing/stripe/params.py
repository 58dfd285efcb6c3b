"""Stripe's form-encoded parameters: decoding, and the checks Stripe makes on them
(unknown parameters refused, types, metadata limits).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from testing.stripe.errors import StripeError

_BRACKETS = re.compile(r"\[([^\]]*)\]")


_CURRENCY = re.compile(r"[a-z]{3}")


def _clone(obj: Any) -> Any:
    """A copy of a JSON-like tree (dicts, lists, immutable leaves): what copy.deepcopy
    does for the fake's objects, several times faster (no memo)."""
    if type(obj) is dict:
        return {k: _clone(v) for k, v in obj.items()}
    if type(obj) is list:
        return [_clone(v) for v in obj]
    return obj


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
