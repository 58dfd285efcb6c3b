"""The ledger's public API: teams, limits, holds, captures, releases, the billing section.

Every method validates its input first (nothing is written on bad input),
then runs one statement or one visible transaction. The arithmetic on
balances happens in sql/holds.sql, on locked rows.

`Ledger` is put together from one part per concern: team changes
(ledger/team_changes.py), the money path (ledger/money_path.py) and reads
(ledger/reads.py), over what they share (ledger/base.py).
"""

from __future__ import annotations

import asyncpg

from db.queries import q
from ledger.catalog import Catalog
from ledger.group_commit import GroupCommit
from ledger.money_path import MoneyPath
from ledger.reads import Reads, usd
from ledger.team_changes import TeamChanges

__all__ = ["Ledger", "usd"]


class Ledger(TeamChanges, MoneyPath, Reads):
    """Tokens of every team, in Postgres. One instance per process; safe to share.

    Holds and settlements go through group commit (ledger/group_commit.py):
    concurrent calls share transactions, up to two batches in flight at once
    (GroupCommit says why). `group_commit=False` sends each one alone, as
    one transaction per call (for comparisons and tests). `batches_in_flight`
    caps the batches committing at once: the worker uses 1, so that what its
    jobs send while one batch commits goes together in the next (fewer, larger
    batches: less CPU per job in the worker's busy event loop).
    """

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
