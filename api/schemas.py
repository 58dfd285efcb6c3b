"""Request bodies and every response body: the routes return these models, so
/openapi.json describes exactly what is sent.

A response (an `Answer`) is built from the same dict the CLI prints (ledger/shapes.py,
billing/rows.py) and validated strictly: a key the model lacks, or a value of
another type, is an error at the route rather than a silent change of the answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, with_config
from typing_extensions import TypedDict

from billing.rows import BillStatus

MAX_JOBS_QUANTITY = 10_000


_EXACT = ConfigDict(extra="forbid", strict=True)


class Answer(BaseModel):
    """A response body: exactly these keys, each value of its type as it is (no coercion)."""

    model_config = _EXACT


# The items of a list an answer holds are TypedDicts with the same checks: pydantic
# validates a dict in place, where a model would build an object per item (a jobs
# request answers 10,000 of them).
item = with_config(_EXACT)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


@item
class ChargeOut(TypedDict):
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


@item
class MemberSpendOut(TypedDict):
    member: str
    spent: Annotated[int, Field(description="tokens captured this billing month")]
    cap: Annotated[int, Field(description="monthly cap in tokens")]
    held: Annotated[int, Field(description="tokens held by the member's running jobs")]
    left: Annotated[int, Field(description="what the member may still hold this month")]


class ForecastOut(Answer):
    """A straight line from the month's start through the tokens used so far."""

    free_runs_out: str | None = Field(description="ISO 8601 date; null: not this month")
    additional_runs_out: str | None = Field(
        description="ISO 8601 date the limit is reached; null: not this month, or no limit"
    )
    projected_additional_cost: str = Field(description="in the team's currency")


class BillingOut(Answer):
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


class HistoryPage(Answer):
    charges: list[ChargeOut] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for older charges; null: done")


class LimitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: StrictInt = Field(ge=0, le=10**12, description="monthly additional-token limit")


class LimitOut(Answer):
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


class TeamOut(Answer):
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


@item
class TeamListed(TypedDict):
    team: str
    plan: str
    seats: int
    interval: str
    anchor: str
    stripe_customer: str | None
    additional_limit: int
    period_start: Annotated[str, Field(description="the billing month containing now")]
    period_end: str


class TeamsOut(Answer):
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


class QuoteOut(Answer):
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


class MemberCapOut(Answer):
    team: str
    member: str
    actor: str
    role: str
    old_cap: int | None
    new_cap: int | None
    changed_at: str


@item
class JobOut(TypedDict):
    job_id: str
    lead_id: str | None
    queued: Annotated[bool, Field(description="false when a job with this id existed already")]


class JobsOut(Answer):
    team: str
    action: str
    jobs: list[JobOut]


JobState = Literal["queued", "running", "captured", "refused", "failed", "released"]


class JobStatusOut(Answer):
    job_id: str
    team: str
    action: str
    lead_id: str | None
    status: JobState
    charge: ChargeOut | None = Field(description="the job's charge in the ledger, once held")
    result: dict[str, Any] | None = Field(description="what the job returned, once finished")


class BillOut(Answer):
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
    attempts: int
    created_at: str
    reissued_as: int | None


class BillsOut(Answer):
    team: str
    bills: list[BillOut]


@item
class BilledCharge(TypedDict):
    charge_id: int
    action: str
    quantity: int
    additional_tokens: int
    job_id: str | None
    lead_id: str | None
    time: str
    settled_at: str | None


class BillExplained(BillOut):
    """A bill and exactly the charges whose additional tokens it billed (README "Billing
    with Stripe", explain a bill)."""

    by_action: dict[str, int]
    charges_tokens: int
    adds_up: bool
    charges: list[BilledCharge]


@item
class AlertOut(TypedDict):
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


class AlertsOut(Answer):
    team: str
    alerts: list[AlertOut] = Field(description="newest first")


class WebhookOut(Answer):
    event_id: str
    type: str
    duplicate: bool = Field(description="true when this event had been handled before")
    result: str


class HealthOut(Answer):
    status: str
    postgres: str
    redis: str
