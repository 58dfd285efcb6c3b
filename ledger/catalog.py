"""The price catalog: actions, plans, unit price, thresholds.

Defaults as README "Prices and plans" gives them; `TOKENS_CATALOG` points at a JSON or TOML file
with the same shape to replace them without code changes.
"""

from __future__ import annotations

import json
import tomllib
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ledger.errors import CatalogError, UnknownAction, UnknownPlan


class Action(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int = Field(gt=0, description="tokens per unit (generation or lead)")
    unit: str = "generation"


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    free_tokens: int = Field(ge=0)
    per_seat: bool = True
    # Trial: the free tokens are granted once per team, ever.
    once: bool = False
    additional_allowed: bool = True
    threshold_cents: int | None = Field(default=None, gt=0)
    # Stripe price ids whose subscriptions put a team on this plan (README "Stripe webhooks").
    stripe_prices: tuple[str, ...] = ()


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: str = "usd"
    additional_token_price: Decimal = Field(default=Decimal("0.01"), gt=0)
    threshold_cents: int = Field(default=5000, gt=0)
    actions: dict[str, Action]
    plans: dict[str, Plan]

    @model_validator(mode="after")
    def _price_is_exact(self) -> Catalog:
        # A unit price finer than 1/10000 of a cent cannot be billed exactly.
        if self.additional_token_price.as_tuple().exponent < -6:  # type: ignore[operator]
            raise ValueError("additional_token_price has more than 6 decimal places")
        return self

    @model_validator(mode="after")
    def _prices_name_one_plan(self) -> Catalog:
        seen: dict[str, str] = {}
        for name, plan in self.plans.items():
            for price in plan.stripe_prices:
                if price in seen:
                    raise ValueError(f"stripe price {price} is in plans {seen[price]} and {name}")
                seen[price] = name
        return self

    def action(self, name: str) -> Action:
        try:
            return self.actions[name]
        except KeyError:
            raise UnknownAction(name, sorted(self.actions)) from None

    def plan(self, name: str) -> Plan:
        try:
            return self.plans[name]
        except KeyError:
            raise UnknownPlan(name, sorted(self.plans)) from None

    def plan_for_price(self, price: str) -> str | None:
        """The plan whose `stripe_prices` holds this Stripe price id, if any."""
        for name, plan in self.plans.items():
            if price in plan.stripe_prices:
                return name
        return None

    def threshold_for(self, plan: str) -> int:
        return self.plan(plan).threshold_cents or self.threshold_cents

    def tokens_for(self, action: str, quantity: int) -> int:
        return self.action(action).tokens * quantity


DEFAULT_CATALOG = Catalog(
    actions={
        "ai_sequence": Action(tokens=50, unit="generation"),
        "ai_icebreaker": Action(tokens=10, unit="generation"),
        "enrich": Action(tokens=10, unit="lead"),
        "debounce": Action(tokens=1, unit="lead"),
    },
    plans={
        "trial": Plan(free_tokens=100, per_seat=False, once=True, additional_allowed=False),
        "email_outreach": Plan(free_tokens=250),
        "sales_engagement": Plan(free_tokens=500),
    },
)


def load_catalog(path: Path | None) -> Catalog:
    """The default catalog, or the one in `path` (.json or .toml)."""
    if path is None:
        return DEFAULT_CATALOG
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
        return Catalog.model_validate(data)
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise CatalogError(f"invalid catalog {path}: {' '.join(first[:3])}") from None
