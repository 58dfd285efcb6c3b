"""Request bodies and the documented shape of every response (for /openapi.json).

Responses are built as plain dicts (ledger/shapes.py's builders where the CLI
prints the same thing) and sent as they are; these models describe them, and
the schemathesis test checks that the two agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from billing.models import BillStatus

MAX_JOBS_QUANTITY = 10_000


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class ChargeOut(BaseModel):
    charge_id: int
    time: str
    action: str
    quantity: int
    tokens: int
    free_tokens: int
    additional_tokens: int
    state: str
    job_id: str | None
    lead_id: str | None
    key: str
    period_start: str
    settled_at: str | None


class MemberSpendOut(BaseModel):
    member: str
    spent: int = Field(description="tokens captured this billing month")
    cap: int = Field(description="monthly cap in tokens")
    held: int = Field(description="tokens held by the member's running jobs")
    left: int = Field(description="what the member may still hold this month")


class ForecastOut(BaseModel):
    """A straight line from the month's start through the tokens used so far."""

    free_runs_out: str | None = Field(description="ISO 8601 date; null: not this month")
    additional_runs_out: str | None = Field(
        description="ISO 8601 date the limit is reached; null: not this month, or no limit"
    )
    projected_additional_cost: str = Field(description="in the team's currency")


class BillingOut(BaseModel):
    team: str
    plan: str
    seats: int
    interval: str
    period_start: str
    period_end: str
    free_granted: int
    free_spent: int
    free_held: int
    free_available: int
    additional_limit: int
    additional_limit_usd: str = Field(description="USD, 2 decimals")
    additional_spent: int
    additional_held: int
    additional_available: int
    additional_spent_usd: str = Field(description="USD, 2 decimals")
    additional_billed: int
    held: int
    unit_price_usd: str
    currency: str
    history: list[ChargeOut] = Field(description="the month's latest charges, newest first")
    members: list[MemberSpendOut] = Field(description="the members with a monthly cap")
    forecast: ForecastOut | None = Field(
        description="the month at its pace so far; null before a day of the month has gone"
    )


class HistoryPage(BaseModel):
    charges: list[ChargeOut] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for older charges; null: done")


class LimitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: StrictInt = Field(ge=0, le=10**12, description="monthly additional-token limit")


class LimitOut(BaseModel):
    team: str
    actor: str
    role: str
    old_limit: int
    new_limit: int
    changed_at: str
    additional_limit_usd: str
    additional_available: int


class TeamIn(BaseModel):
    """The fields of `tokens team set`."""

    model_config = ConfigDict(extra="forbid")

    plan: str = Field(min_length=1, max_length=200)
    seats: StrictInt = Field(ge=0, le=1_000_000)
    interval: Literal["month", "year"]
    anchor: datetime = Field(description="billing anchor, ISO 8601 (no offset: UTC)")
    stripe_customer: str | None = Field(default=None, min_length=1, max_length=255)


class TeamOut(BaseModel):
    team: str
    created: bool
    plan: str
    seats: int
    interval: str
    anchor: str
    stripe_customer: str | None
    additional_limit: int
    period_start: str
    period_end: str
    free_granted: int


class TeamListed(BaseModel):
    team: str
    plan: str
    seats: int
    interval: str
    anchor: str
    stripe_customer: str | None
    additional_limit: int
    period_start: str = Field(description="the billing month containing now")
    period_end: str


class TeamsOut(BaseModel):
    teams: list[TeamListed]


class JobsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(min_length=1, max_length=100)
    quantity: StrictInt | None = Field(
        default=None, ge=1, le=MAX_JOBS_QUANTITY, description="generations (AI actions only)"
    )
    payload: dict[str, Any] | None = Field(
        default=None,
        description='as for `tokens enqueue`: {"leads": [...]} for enrich and debounce '
        '(one job per lead), {"prompt": ...} for ai_sequence, {"lead": {...}} for ai_icebreaker',
    )
    job_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=150,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@/+-]*$",
        description="base job id, the request's idempotency key: the same request again "
        "queues nothing new, another request with it is a 409; no ':' (it joins the id to a "
        "lead or a generation)",
    )
    member: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="who launches the jobs (their monthly cap applies): service tokens only; "
        "a member's or admin's jobs are theirs (the token's sub)",
    )
    only_if_all_fit: bool = Field(
        default=False,
        description="queue nothing (409 not_enough_tokens or member_cap) unless every job "
        "fits at this moment",
    )


class QuoteOut(BaseModel):
    """What a jobs request would cost now (nothing held or queued)."""

    team: str
    action: str
    member: str | None = Field(description="whose monthly cap was applied")
    tokens: int
    free_tokens: int
    additional_tokens: int
    cost: str = Field(description="of the additional tokens, in the currency's decimals")
    currency: str
    leads: int | None = Field(description="for a lead list: how many leads")
    leads_that_fit: int | None = Field(description="for a lead list: how many fit now")
    fits: bool
    period_start: str
    period_end: str


class MemberCapIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: StrictInt | None = Field(
        ge=0, le=10**12, description="monthly cap in tokens; null removes the cap"
    )


class MemberCapOut(BaseModel):
    team: str
    member: str
    actor: str
    role: str
    old_cap: int | None
    new_cap: int | None
    changed_at: str


class JobOut(BaseModel):
    job_id: str
    lead_id: str | None
    queued: bool = Field(description="false when a job with this id existed already")


class JobsOut(BaseModel):
    team: str
    action: str
    jobs: list[JobOut]


JobState = Literal["queued", "running", "captured", "refused", "failed", "released"]


class JobStatusOut(BaseModel):
    job_id: str
    team: str
    action: str
    lead_id: str | None
    status: JobState
    charge: ChargeOut | None = Field(description="the job's charge in the ledger, once held")
    result: dict[str, Any] | None = Field(description="what the job returned, once finished")


class BillOut(BaseModel):
    """A bill as `tokens bills --json` prints it."""

    bill_id: int
    team: str
    reason: str
    tokens: int
    amount_cents: int
    currency: str
    unit_price_usd: str
    period_start: str
    period_end: str
    status: BillStatus
    step: str
    stripe_invoice_id: str | None
    stripe_invoice_status: str | None
    error: str | None
    error_code: str | None
    collection_method: str | None
    decline_code: str | None
    declines: int
    next_pay_at: str | None
    reissue_of: int | None
    reissued_as: int | None = None
    attempts: int
    created_at: str


class BillsOut(BaseModel):
    team: str
    bills: list[BillOut]


class BilledCharge(BaseModel):
    charge_id: int
    action: str
    quantity: int
    additional_tokens: int
    job_id: str | None
    lead_id: str | None
    time: str
    settled_at: str | None


class BillExplained(BillOut):
    """A bill and exactly the charges whose additional tokens it billed.

    README "Billing with Stripe", Explain a bill."""

    by_action: dict[str, int]
    charges_tokens: int
    adds_up: bool
    charges: list[BilledCharge]


class AlertOut(BaseModel):
    alert_id: str
    team: str
    kind: Literal["free", "additional"]
    level: int
    period_start: str
    spent: int
    granted_or_limit: int
    created_at: str
    delivered_at: str | None
    delivery_attempts: int


class AlertsOut(BaseModel):
    team: str
    alerts: list[AlertOut] = Field(description="newest first")


class WebhookOut(BaseModel):
    event_id: str
    type: str
    duplicate: bool = Field(description="true when this event had been handled before")
    result: str


class HealthOut(BaseModel):
    status: str
    postgres: str
    redis: str
