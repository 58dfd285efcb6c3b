"""Changing teams: a team and its plan, the additional-token limit, members' caps,
and the records of those changes."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from db.pool import Conn
from db.queries import q
from ledger import validate
from ledger.base import LedgerBase
from ledger.errors import BadInput, NotAdmin, TrialNoAdditional, UnknownTeam
from ledger.logs import cached_logger
from ledger.results import LimitChangeRow, MemberCapChangeRow, TeamRow

log = cached_logger("tokens.ledger")


class TeamChanges(LedgerBase):
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

    async def limit_changes(self, team: str) -> list[LimitChangeRow]:
        await self.get_team(team)
        rows = await self._run(lambda: self.pool.fetch(q("limit_changes"), team))
        return [LimitChangeRow.from_record(r) for r in rows]
