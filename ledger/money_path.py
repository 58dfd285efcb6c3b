"""The money path: hold the tokens of a search, then capture or release them; the
holds of dead workers expire. Each goes through group commit and tokens_apply
(ledger/sql/holds.sql), where the arithmetic on balances happens."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from db.queries import q
from ledger import validate
from ledger.base import LedgerBase, _raise_translated
from ledger.group_commit import HoldItem, SettleItem, apply_one
from ledger.logs import cached_logger
from ledger.results import ChargeRow, HoldResult, Settlement, StaleHold

log = cached_logger("tokens.ledger")


class MoneyPath(LedgerBase):
    # How many charges' teams a Ledger remembers for routing their settlements.
    REMEMBERED_TEAMS = 100_000

    def _hold_args(
        self, team: str, action: str, quantity: int, key: str, at: datetime
    ) -> tuple[int, datetime]:
        validate.team_id(team)
        validate.quantity(quantity)
        validate.key(key)
        return self.catalog.tokens_for(action, quantity), validate.moment(at)

    async def hold(
        self,
        team: str,
        action: str,
        quantity: int,
        *,
        key: str,
        at: datetime,
        job_id: str | None = None,
        lead_id: str | None = None,
        member: str | None = None,
    ) -> HoldResult:
        """Hold the tokens of one search before it runs (one round trip). `member`: who
        launched it; a hold that would take them over their cap is refused."""
        tokens, at = self._hold_args(team, action, quantity, key, at)
        if member is not None:
            validate.member(member)
        try:
            row = await self.group.hold(
                team, key, action, quantity, tokens, at, job_id, lead_id, member
            )
        except asyncpg.PostgresError as exc:
            _raise_translated(exc)
        result = _hold_result(team, key, action, quantity, row)
        if result.state == "held" and result.charge_id is not None:
            remembered = self._charge_team
            remembered[result.charge_id] = team
            if len(remembered) > self.REMEMBERED_TEAMS:  # settled elsewhere: forget the oldest
                del remembered[next(iter(remembered))]
        _log_hold(result, job_id)
        return result

    async def capture(self, charge_id: int, *, at: datetime) -> Settlement:
        """The search happened: the held tokens are spent, whatever its result."""
        return await self._settle(charge_id, "captured", at)

    async def release(self, charge_id: int, *, at: datetime) -> Settlement:
        """The search never happened: the held tokens come back."""
        return await self._settle(charge_id, "released", at)

    async def _settle(self, charge_id: int, state: str, at: datetime) -> Settlement:
        at = validate.moment(at)
        team = self._charge_team.pop(charge_id, None)
        try:
            row = await self.group.settle(charge_id, state, at, team)
        except asyncpg.PostgresError as exc:
            _raise_translated(exc)
        settlement = _settlement(row)
        c = settlement.charge
        if settlement.changed:
            log.info(
                "capture" if state == "captured" else "release",
                team=c.team_id,
                charge_id=c.id,
                key=c.idempotency_key,
                job_id=c.job_id,
                tokens=c.tokens,
                free_tokens=c.free_tokens,
                additional_tokens=c.additional_tokens,
            )
        return settlement

    async def charge(
        self,
        team: str,
        action: str,
        quantity: int,
        *,
        key: str,
        at: datetime,
        member: str | None = None,
    ) -> tuple[HoldResult, Settlement | None]:
        """Hold and capture at once, as a search that already happened: the hold, then
        its capture, each through tokens_apply, in one transaction (not group commit).

        A replayed key returns the existing charge untouched.
        """
        tokens, at = self._hold_args(team, action, quantity, key, at)
        if member is not None:
            validate.member(member)

        async def run() -> tuple[HoldResult, Settlement | None]:
            async with self.pool.acquire() as conn, conn.transaction():
                item = HoldItem(team, key, action, quantity, tokens, at, None, None, member)
                held = _hold_result(team, key, action, quantity, await apply_one(conn, item))
                if held.refused or held.replayed:
                    return held, None
                assert held.charge_id is not None
                row = await apply_one(conn, SettleItem(held.charge_id, "captured", at))
                return held, _settlement(row)

        held, settlement = await self._run(run)
        _log_hold(held, None)
        return held, settlement

    async def stale_holds(self, *, older_than: datetime) -> list[StaleHold]:
        """The holds of jobs that `expire_holds` would release now."""
        older_than = validate.moment(older_than)
        rows = await self._run(lambda: self.pool.fetch(q("stale_holds"), older_than))
        return [StaleHold(r["id"], r["team_id"], r["idempotency_key"], r["job_id"]) for r in rows]

    async def expire_holds(
        self, *, older_than: datetime, at: datetime, keep_jobs: Collection[str] = ()
    ) -> list[ChargeRow]:
        """Release holds left behind by dead workers; not those of `keep_jobs` (jobs
        still queued or running, which settle their holds themselves)."""
        older_than, at = validate.moment(older_than), validate.moment(at)
        keep = sorted(keep_jobs)
        rows = await self._run(lambda: self.pool.fetch(q("expire_holds"), older_than, at, keep))
        expired = [ChargeRow.from_record(r) for r in rows]
        for c in expired:
            log.warning(
                "hold_expired",
                team=c.team_id,
                charge_id=c.id,
                key=c.idempotency_key,
                job_id=c.job_id,
                tokens=c.tokens,
                held_at=c.held_at.isoformat(),
            )
        return expired


def _hold_result(
    team: str, key: str, action: str, quantity: int, row: Mapping[str, Any] | asyncpg.Record | None
) -> HoldResult:
    assert row is not None
    return HoldResult(
        team=team,
        key=key,
        action=action,
        quantity=quantity,
        charge_id=row["charge_id"],
        state=row["state"],
        replayed=row["replayed"],
        tokens=row["tokens"],
        free_tokens=row["free_tokens"],
        additional_tokens=row["additional_tokens"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        held_at=row["held_at"],
        free_available=row["free_available"],
        additional_available=row["additional_available"],
        member=row["member"],
        refusal=row["refusal"],
    )


def _settlement(row: Mapping[str, Any] | asyncpg.Record | None) -> Settlement:
    assert row is not None
    return Settlement(
        charge=ChargeRow.from_record(row, id=row["charge_id"]),
        changed=row["changed"],
        unbilled_additional=row["unbilled_additional"],
        threshold_reached=row["threshold_reached"],
    )


def _log_hold(result: HoldResult, job_id: str | None) -> None:
    fields = dict(
        team=result.team,
        key=result.key,
        action=result.action,
        quantity=result.quantity,
        tokens=result.tokens,
        job_id=job_id,
    )
    if result.refused:
        log.info(
            "hold_refused",
            **fields,
            free_available=result.free_available,
            additional_available=result.additional_available,
        )
    elif result.replayed:
        log.info("hold_replayed", **fields, charge_id=result.charge_id, state=result.state)
    else:
        log.info(
            "hold",
            **fields,
            charge_id=result.charge_id,
            free_tokens=result.free_tokens,
            additional_tokens=result.additional_tokens,
        )
