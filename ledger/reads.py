"""Reading the ledger: a charge, the billing section, a quote, the history, alerts,
and the drift check of the running totals."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from db.queries import q
from ledger import validate
from ledger.alerts import TEAM_ALERTS, AlertRow
from ledger.base import LedgerBase
from ledger.budget import Quote, quote
from ledger.results import BillingSection, ChargeRow, MemberSpend

CENT = Decimal("0.01")


def usd(tokens: int, unit_price: Decimal) -> Decimal:
    """Exact USD for a token count, rounded half-up to the cent."""
    return (Decimal(tokens) * unit_price).quantize(CENT, rounding=ROUND_HALF_UP)


class Reads(LedgerBase):
    async def get_charge(self, charge_id: int) -> ChargeRow | None:
        row = await self._run(lambda: self.pool.fetchrow(q("get_charge"), charge_id))
        return None if row is None else ChargeRow.from_record(row)

    async def charge_by_key(self, team: str, key: str) -> ChargeRow | None:
        row = await self._run(lambda: self.pool.fetchrow(q("charge_by_key"), team, key))
        return None if row is None else ChargeRow.from_record(row)

    async def billing(self, team: str, *, at: datetime, recent: int = 20) -> BillingSection:
        """The billing section of the month containing `at` (opened if it was not yet)."""
        validate.team_id(team)
        at = validate.moment(at)
        row = await self._run(lambda: self.pool.fetchrow(q("billing_section"), team, at))
        assert row is not None
        charges = await self.pool.fetch(q("month_charges"), team, row["period_start"], recent)
        members = await self.pool.fetch(q("member_spend"), team, row["period_start"])
        limit = int(row["effective_limit"])
        unit_price = Decimal(row["unit_price"]).normalize()
        additional_used = row["additional_held"] + row["additional_spent"]
        return BillingSection(
            team=row["team"],
            plan=row["plan"],
            seats=row["seats"],
            interval=row["billing_interval"],
            stripe_customer=row["stripe_customer"],
            period_start=row["period_start"],
            period_end=row["period_end"],
            free_granted=row["free_granted"],
            free_spent=row["free_spent"],
            free_held=row["free_held"],
            free_available=row["free_granted"] - row["free_held"] - row["free_spent"],
            additional_limit=limit,
            additional_limit_usd=usd(limit, unit_price),
            additional_spent=row["additional_spent"],
            additional_held=row["additional_held"],
            additional_available=max(limit - additional_used, 0),
            additional_spent_usd=usd(row["additional_spent"], unit_price),
            additional_billed=row["additional_billed"],
            unit_price=unit_price,
            currency=row["currency"],
            recent_charges=[ChargeRow.from_record(c) for c in charges],
            members=[MemberSpend.from_record(m) for m in members],
        )

    async def quote(
        self,
        team: str,
        action: str,
        *,
        quantity: int = 1,
        leads: int | None = None,
        member: str | None = None,
        at: datetime,
    ) -> Quote:
        """What a job would cost now and how much of it fits (holding nothing). `leads`:
        the size of a lead list (one charge of the action's tokens per lead)."""
        validate.team_id(team)
        validate.quantity(quantity)
        if leads is not None:
            validate.quantity(leads)
        if member is not None:
            validate.member(member)
        tokens_each = self.catalog.tokens_for(action, 1 if leads is not None else quantity)
        section = await self.billing(team, at=at, recent=0)
        capped = next((m for m in section.members if m.member == member), None)
        return quote(
            section,
            action=action,
            tokens_each=tokens_each,
            count=leads if leads is not None else 1,
            is_lead_list=leads is not None,
            member_left=None if capped is None else capped.left,
        )

    async def history(self, team: str) -> list[ChargeRow]:
        """Every charge of the team, oldest first."""
        validate.team_id(team)
        await self.get_team(team)
        rows = await self._run(lambda: self.pool.fetch(q("history"), team))
        return [ChargeRow.from_record(r) for r in rows]

    async def history_page(
        self, team: str, *, before: int | None, limit: int, month: datetime | None = None
    ) -> list[ChargeRow]:
        """Up to `limit` charges of the team, newest first, older than charge `before`;
        only those of the billing month starting at `month` when it is given."""
        validate.team_id(team)
        await self.get_team(team)
        rows = await self._run(
            lambda: self.pool.fetch(q("history_page"), team, before, limit, month)
        )
        return [ChargeRow.from_record(r) for r in rows]

    async def alerts(self, team: str) -> list[AlertRow]:
        """The team's usage alerts (README "Usage alerts"), newest first."""
        validate.team_id(team)
        await self.get_team(team)
        rows = await self._run(lambda: self.pool.fetch(TEAM_ALERTS, team))
        return [AlertRow.from_record(r) for r in rows]

    async def drift(self) -> list[dict[str, Any]]:
        """Running totals that differ from their charges (always empty): a month's, or a
        capped member's in a month."""
        months = await self.pool.fetch(q("ledger_drift"))
        members = await self.pool.fetch(q("member_drift"))
        return [dict(r) for r in months] + [dict(r) for r in members]
