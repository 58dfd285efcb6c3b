"""What every part of the Ledger shares: its pool, catalog and group commit, the
translation of Postgres errors into ours, and a team's row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import asyncpg

from db.pool import Conn
from db.queries import q
from ledger.catalog import Catalog
from ledger.errors import UnknownTeam, translate
from ledger.group_commit import GroupCommit
from ledger.results import TeamRow

T = TypeVar("T")


class LedgerBase:
    """The state of a Ledger (set by `Ledger.__init__`) and what each of its parts uses."""

    pool: asyncpg.Pool
    catalog: Catalog
    group: GroupCommit
    # The team of each charge this Ledger held and has not settled yet (MoneyPath).
    _charge_team: dict[int, str]

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except asyncpg.PostgresError as exc:
            _raise_translated(exc)

    async def _team_row(self, team: str, conn: Conn | None = None) -> asyncpg.Record | None:
        db = self.pool if conn is None else conn
        return await self._run(lambda: db.fetchrow(q("get_team"), team))

    async def get_team(self, team: str, conn: Conn | None = None) -> TeamRow:
        row = await self._team_row(team, conn)
        if row is None:
            raise UnknownTeam(team)
        return TeamRow.from_record(row)


def _raise_translated(exc: asyncpg.PostgresError) -> NoReturn:
    """Our error for a Postgres one we know (a refusal raised in SQL), else it as is."""
    mine = translate(exc)
    if mine is None:
        raise exc
    raise mine from exc
