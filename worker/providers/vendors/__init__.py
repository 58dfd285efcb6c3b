"""The vendors a waterfall can ask, by the names TOKENS_ENRICH_PROVIDERS and
TOKENS_VERIFY_PROVIDERS use. Adding one: a module here with its `Vendor`
class and table of answers, and a line below."""

from __future__ import annotations

from worker.providers.vendor import Vendor
from worker.providers.vendors.debounce import DeBounce
from worker.providers.vendors.hunter import Hunter
from worker.providers.vendors.pdl import PeopleDataLabs
from worker.providers.vendors.zerobounce import ZeroBounce

VENDORS: dict[str, type[Vendor]] = {
    v.name: v for v in (PeopleDataLabs, Hunter, DeBounce, ZeroBounce)
}
