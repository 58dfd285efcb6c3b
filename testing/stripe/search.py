"""Invoice search in Stripe's query language, on an index that lags writes by
``search_lag_calls`` requests (stale versions included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from testing.stripe.errors import StripeError, _missing
from testing.stripe.events import Events
from testing.stripe.params import _check_known, _clone, _limit, _str
from testing.stripe.shapes import Json

_CLAUSE = re.compile(
    r"""\s*(?P<neg>-?)(?:metadata\[(?:'(?P<mk1>[^']*)'|"(?P<mk2>[^"]*)")\]|(?P<field>[a-z_]+))"""
    r"""\s*(?P<op>:|>=|<=|>|<|~)\s*"""
    r"""(?:'(?P<v1>[^']*)'|"(?P<v2>[^"]*)"|(?P<num>-?\d+)|(?P<null>null))\s*"""
)


_JOIN = re.compile(r"(AND|OR)\b")


INVOICE_SEARCH_FIELDS = {
    "created",
    "currency",
    "customer",
    "metadata",
    "number",
    "receipt_number",
    "status",
    "subscription",
    "total",
}


@dataclass(frozen=True)
class _Clause:
    negate: bool
    field: str
    meta_key: str | None
    op: str
    value: str | int | None


def parse_search_query(query: str) -> tuple[str, list[_Clause]]:
    """Parse Stripe's search language (clauses joined by all-AND or all-OR)."""
    clauses: list[_Clause] = []
    joins: set[str] = set()
    pos = 0
    while True:
        m = _CLAUSE.match(query, pos)
        if not m:
            raise StripeError(
                400,
                f"Invalid query: could not parse near position {pos}: {query[pos : pos + 30]!r}",
                param="query",
            )
        clauses.append(_clause(m))
        pos = m.end()
        if pos >= len(query):
            break
        j = _JOIN.match(query, pos)
        if not j:
            raise StripeError(
                400, f"Invalid query: expected AND or OR at position {pos}", param="query"
            )
        joins.add(j.group(1))
        pos = j.end()
    if len(joins) > 1:
        raise StripeError(
            400, "Invalid query: AND and OR cannot be combined in one query", param="query"
        )
    if len(clauses) > 10:
        raise StripeError(400, "Invalid query: at most 10 clauses", param="query")
    return (joins.pop() if joins else "AND"), clauses


def _clause(m: re.Match[str]) -> _Clause:
    meta_key = m.group("mk1") if m.group("mk1") is not None else m.group("mk2")
    field = "metadata" if meta_key is not None else m.group("field")
    if field not in INVOICE_SEARCH_FIELDS:
        raise StripeError(
            400,
            f"Field `{field}` is an unsupported search field for resource `invoices`.",
            param="query",
        )
    value: str | int | None
    if m.group("num") is not None:
        value = int(m.group("num"))
    elif m.group("null") is not None:
        value = None
    else:
        value = m.group("v1") if m.group("v1") is not None else m.group("v2")
    return _Clause(m.group("neg") == "-", field, meta_key, m.group("op"), value)


def _clause_matches(clause: _Clause, obj: Json) -> bool:
    if clause.meta_key is not None:
        actual: Any = obj.get("metadata", {}).get(clause.meta_key)
    else:
        actual = obj.get(clause.field)
    value = clause.value
    if clause.op == ":":
        hit = (actual is None) if value is None else str(actual) == str(value)
    elif clause.op == "~":
        hit = actual is not None and str(value) in str(actual)
    else:
        hit = _compare(actual, clause.op, value)
    return hit != clause.negate


def _compare(actual: Any, op: str, value: Any) -> bool:
    if not isinstance(actual, int) or not isinstance(value, int):
        return False
    return {">": actual > value, "<": actual < value, ">=": actual >= value, "<=": actual <= value}[
        op
    ]


class Search(Events):
    """``GET /v1/invoices/search`` and the lagging index behind it."""

    def flush_search_index(self) -> None:
        """Make every write searchable now (the search index catches up)."""
        for versions in self._search_versions.values():
            versions[:] = [(0, versions[-1][1])]

    def _touch(self, inv: Json) -> None:
        """Record a write for the (lagging) search index."""
        visible_from = self._tick + self.search_lag_calls + 1
        versions = self._search_versions.setdefault(inv["id"], [])
        # Versions older than the newest one visible now can never be searched again.
        visible = [i for i, (since, _) in enumerate(versions) if since <= self._tick]
        if visible:
            del versions[: visible[-1]]
        versions.append((visible_from, _clone(inv)))

    def _search_invoices(self, params: dict[str, Any]) -> Json:
        _check_known(params, {"query", "limit", "page"})
        query = _str(params, "query")
        if not query:
            raise _missing("query")
        join, clauses = parse_search_query(query)
        limit = _limit(params)
        page = _str(params, "page")
        offset = int(page.removeprefix("page_")) if page and page[5:].isdigit() else 0
        combine = all if join == "AND" else any
        hits = [
            inv
            for inv in self._searchable_invoices()
            if combine(_clause_matches(c, inv) for c in clauses)
        ]
        data = hits[offset : offset + limit]
        more = len(hits) > offset + limit
        return {
            "object": "search_result",
            "data": [self._render_invoice(i) for i in data],
            "has_more": more,
            "next_page": f"page_{offset + limit}" if more else None,
            "url": "/v1/invoices/search",
        }

    def _searchable_invoices(self) -> list[Json]:
        """Latest version of each invoice that the (lagging) index has caught up with."""
        out = []
        for versions in self._search_versions.values():
            visible = [snap for since, snap in versions if since <= self._tick]
            if visible:
                out.append(visible[-1])
        out.sort(key=lambda i: (i["created"], self._order.get(i["id"], 0)), reverse=True)
        return out
