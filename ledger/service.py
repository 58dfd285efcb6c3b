"""The ledger's public API: teams, limits, holds, captures, releases, the billing section.

Every method validates its input first (nothing is written on bad input),
then runs one statement or one visible transaction. The arithmetic on
balances happens in sql/holds.sql, on locked rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NoReturn, TypeVar

import asyncpg

from db.pool import Conn
from db.queries import q
from ledger import validate
from ledger.alerts import TEAM_ALERTS, AlertRow
from ledger.budget import Quote, quote
from ledger.catalog import Catalog
from ledger.errors import BadInput, NotAdmin, TrialNoAdditional, UnknownTeam, translate
from ledger.group_commit import GroupCommit, HoldItem, SettleItem, apply_one
from ledger.logs import cached_logger
from ledger.results import (
    BillingSection,
    ChargeRow,
    HoldResult,
    LimitChangeRow,
    MemberCapChangeRow,
    MemberSpend,
    Settlement,
    StaleHold,
    TeamRow,
)

log = cached_logger("tokens.ledger")

T = TypeVar("T")
CENT = Decimal("0.01")


def usd(tokens: int, unit_price: Decimal) -> Decimal:
    """Exact USD for a token count, rounded half-up to the cent."""
    return (Decimal(tokens) * unit_price).quantize(CENT, rounding=ROUND_HALF_UP)


class Ledger:
    """Tokens of every team, in Postgres. One instance per process; safe to share.

    Holds and settlements go through group commit (ledger/group_commit.py):
    concurrent calls share transactions, up to two batches in flight at once
    (GroupCommit says why). `group_commit=False` sends each one alone, as
    one transaction per call (for comparisons and tests). `batches_in_flight`
    caps the batches committing at once: the worker uses 1, so that what its
    jobs send while one batch commits goes together in the next (fewer, larger
    batches: less CPU per job in the worker's busy event loop).
    """

    # How many charges' teams a Ledger remembers for routing their settlements.
    REMEMBERED_TEAMS = 100_000

    def __init__(
        self,
        pool: asyncpg.Pool,
        catalog: Catalog,
        *,
        group_commit: bool = True,
        batches_in_flight: int | None = None,
    ) -> None:
        self.pool = pool
        self.catalog = catalog
        self.group = (
            GroupCommit(pool, max_inflight=batches_in_flight)
            if group_commit
            else GroupCommit(pool, max_batch=1, max_inflight=1 << 30, min_batch=1, by_team=False)
        )
        # The team of each charge this Ledger held and has not settled yet, oldest
        # first: a settlement carries only its charge id, and group commit routes it
        # with its team's other items (a hint only: unknown, it may join any batch).
        self._charge_team: dict[int, str] = {}

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except asyncpg.PostgresError as exc:
            _raise_translated(exc)

    async def sync_catalog(self) -> None:
        """Write the catalog's plans where the money functions can read them."""
        rows = [
            (
                name,
                plan.free_tokens,
                plan.per_seat,
                plan.once,
                plan.additional_allowed,
                self.catalog.additional_token_price,
                self.catalog.threshold_for(name),
                self.catalog.currency,
            )
            for name, plan in sorted(self.catalog.plans.items())
        ]
        await self._run(lambda: self.pool.executemany(q("upsert_plan"), rows))

    # -- teams ---------------------------------------------------------------

    async def set_team(
        self,
        team: str,
        *,
        plan: str,
        seats: int,
        interval: str,
        anchor: datetime,
        at: datetime,
        stripe_customer: str | None = None,
        conn: Conn | None = None,
    ) -> tuple[TeamRow, bool]:
        """Create or update a team; returns (team, created). On `conn` when given (a
        caller's transaction), so that the caller never waits for a second connection."""
        validate.team_id(team)
        self.catalog.plan(plan)
        validate.seats(seats)
        validate.interval(interval)
        anchor, at = validate.moment(anchor), validate.moment(at)
        if stripe_customer is not None:
            validate.stripe_customer(stripe_customer)
        db = self.pool if conn is None else conn
        if not validate.reachable_over_http(team) and await self._team_row(team, conn) is None:
            # Refused for new teams only: one made before this rule keeps working.
            raise BadInput(
                f"invalid team id {team!r}: a '.' or '..' between slashes is not allowed "
                "(HTTP clients rewrite such paths, the team's URLs would reach another team)"
            )
        row = await self._run(
            lambda: db.fetchrow(
                q("set_team"), team, plan, seats, interval, anchor, stripe_customer, at
            )
        )
        assert row is not None
        created = bool(row["created"])
        result = TeamRow.from_record(row)
        log.info(
            "team_set",
            team=team,
            plan=plan,
            seats=seats,
            interval=interval,
            anchor=anchor.isoformat(),
            created=created,
        )
        return result, created

    async def teams(self, *, at: datetime) -> list[tuple[TeamRow, datetime, datetime]]:
        """Every team, by id, with the start and end of its billing month containing `at`."""
        at = validate.moment(at)
        rows = await self._run(lambda: self.pool.fetch(q("list_teams"), at))
        return [(TeamRow.from_record(r), r["period_start"], r["period_end"]) for r in rows]

    async def months(self, team: str, *, at: datetime) -> list[tuple[datetime, datetime]]:
        """The team's billing months with charges, and the one containing `at`, newest first."""
        validate.team_id(team)
        await self.get_team(team)
        at = validate.moment(at)
        rows = await self._run(lambda: self.pool.fetch(q("team_months"), team, at))
        return [(r["period_start"], r["period_end"]) for r in rows]

    async def _team_row(self, team: str, conn: Conn | None = None) -> asyncpg.Record | None:
        db = self.pool if conn is None else conn
        return await self._run(lambda: db.fetchrow(q("get_team"), team))

    async def get_team(self, team: str, conn: Conn | None = None) -> TeamRow:
        row = await self._team_row(team, conn)
        if row is None:
            raise UnknownTeam(team)
        return TeamRow.from_record(row)

    async def set_limit(
        self, team: str, tokens: int, *, actor: str, role: str, at: datetime
    ) -> LimitChangeRow:
        """Change the monthly additional-token limit: admins only, every change recorded."""
        validate.team_id(team)
        validate.limit(tokens)
        validate.actor(actor)
        validate.role(role)
        at = validate.moment(at)
        if role != "admin":
            log.info("limit_refused", team=team, actor=actor, role=role, requested=tokens)
            raise NotAdmin(actor, role)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._run(lambda: conn.fetchrow(q("lock_team"), team))
            if row is None:
                raise UnknownTeam(team)
            plan = self.catalog.plan(row["plan"])
            if tokens > 0 and not plan.additional_allowed:
                raise TrialNoAdditional(team)
            await conn.execute(q("set_limit"), team, tokens, at)
            change = await conn.fetchrow(
                q("record_limit_change"), team, actor, role, row["additional_limit"], tokens, at
            )
        assert change is not None
        log.info("limit_set", team=team, actor=actor, old=row["additional_limit"], new=tokens)
        return LimitChangeRow.from_record(change)

    async def set_member_cap(
        self, team: str, member: str, tokens: int | None, *, actor: str, role: str, at: datetime
    ) -> MemberCapChangeRow:
        """Set (or, with None, remove) a member's monthly cap in tokens: admins only,
        every change recorded. A cap below what the member spent this month leaves
        them nothing more to spend; it takes nothing back."""
        validate.team_id(team)
        validate.member(member)
        if tokens is not None:
            validate.cap(tokens)
        validate.actor(actor)
        validate.role(role)
        at = validate.moment(at)
        if role != "admin":
            log.info("member_cap_refused", team=team, actor=actor, role=role, member=member)
            raise NotAdmin(actor, role, "a member's monthly cap")

        async def run() -> asyncpg.Record | None:
            async with self.pool.acquire() as conn, conn.transaction():
                # The team's lock orders this against opening a month (tokens_open_month).
                if await conn.fetchrow(q("lock_team"), team) is None:
                    raise UnknownTeam(team)
                old = await conn.fetchval(q("member_cap"), team, member)
                if tokens is None:
                    await conn.execute(q("remove_member_cap"), team, member)
                else:
                    await conn.execute(q("set_member_cap"), team, member, tokens, at)
                return await conn.fetchrow(
                    q("record_member_cap_change"), team, member, actor, role, old, tokens, at
                )

        change = await self._run(run)
        assert change is not None
        log.info("member_cap_set", team=team, member=member, actor=actor,
                 old=change["old_cap"], new=tokens)  # fmt: skip
        return MemberCapChangeRow.from_record(change)

    async def member_cap_changes(self, team: str) -> list[MemberCapChangeRow]:
        await self.get_team(team)
        rows = await self._run(
            lambda: self.pool.fetch(
                "SELECT * FROM member_cap_changes WHERE team_id = $1 ORDER BY id", team
            )
        )
        return [MemberCapChangeRow.from_record(r) for r in rows]

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

    async def limit_changes(self, team: str) -> list[LimitChangeRow]:
        await self.get_team(team)
        rows = await self._run(lambda: self.pool.fetch(q("limit_changes"), team))
        return [LimitChangeRow.from_record(r) for r in rows]

    # -- the money path ------------------------------------------------------

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

    async def get_charge(self, charge_id: int) -> ChargeRow | None:
        row = await self._run(lambda: self.pool.fetchrow(q("get_charge"), charge_id))
        return None if row is None else ChargeRow.from_record(row)

    async def charge_by_key(self, team: str, key: str) -> ChargeRow | None:
        row = await self._run(lambda: self.pool.fetchrow(q("charge_by_key"), team, key))
        return None if row is None else ChargeRow.from_record(row)

    # -- reading -------------------------------------------------------------

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


def _raise_translated(exc: asyncpg.PostgresError) -> NoReturn:
    """Our error for a Postgres one we know (a refusal raised in SQL), else it as is."""
    mine = translate(exc)
    if mine is None:
        raise exc
    raise mine from exc


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
