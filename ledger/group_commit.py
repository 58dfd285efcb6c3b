"""Group commit: the concurrent holds and settlements of one process, in one transaction.

One commit per charge caps a hot team at what one Postgres connection can
commit in a row (two commits per search: the hold and the capture). Here a
caller's hold or settlement is queued, and whatever queued while the previous
batch was committing goes to Postgres as one `tokens_apply` call: one round
trip, one transaction, one update of each team's month row, however many
charges it carries. Nothing is answered before its batch has committed, so
durability is the same as one commit per charge.

Each item keeps its own outcome: its own idempotency key, its own refusal
(the one hold that did not fit is refused, not its batch) and its own error.
If a batch fails as a whole (a deadlock, a lost connection, a bug), every
item of it is applied again on its own through `tokens_hold` /
`tokens_settle`; both are idempotent, so an item that did commit just
replays, and one bad item can only fail itself.

A caller that is cancelled while waiting does not cancel the batch: its
item commits or not with the others, exactly like a reply lost on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from db.queries import q
from ledger.errors import (
    BadInput,
    ChargeAlreadySettled,
    IdempotencyMismatch,
    TokensError,
    UnknownCharge,
    UnknownTeam,
)
from ledger.results import ChargeRow

log = structlog.get_logger("tokens.ledger")

Row = dict[str, Any]


@dataclass
class HoldItem:
    team: str
    key: str
    action: str
    quantity: int
    tokens: int
    at: datetime
    job_id: str | None
    lead_id: str | None
    done: asyncio.Future[Row] = field(repr=False)


@dataclass
class SettleItem:
    charge_id: int
    state: str
    at: datetime
    done: asyncio.Future[Row] = field(repr=False)


Item = HoldItem | SettleItem

# The columns of a hold's answer (as tokens_hold returns them) and of a
# settlement's (the charge, as tokens_settle returns it, plus its extras).
HOLD_COLUMNS = (
    "charge_id",
    "state",
    "replayed",
    "tokens",
    "free_tokens",
    "additional_tokens",
    "period_start",
    "period_end",
    "held_at",
    "free_available",
    "additional_available",
)
CHARGE_COLUMNS = tuple(f.name for f in fields(ChargeRow) if f.name != "id")


def item_error(item: Item, code: str, message: str) -> TokensError:
    """The error a single-charge call would have raised for this item."""
    if code == "TK001" and isinstance(item, HoldItem):
        return UnknownTeam(item.team)
    if code == "TK002":
        return IdempotencyMismatch(message)
    if code == "TK003" and isinstance(item, SettleItem):
        return UnknownCharge(item.charge_id)
    if code == "TK004":
        return ChargeAlreadySettled(message)
    return BadInput(message)


def hold_row(row: asyncpg.Record) -> Row:
    return {k: row[k] for k in HOLD_COLUMNS}


def settle_row(row: asyncpg.Record) -> Row:
    out = {k: row[k] for k in CHARGE_COLUMNS}
    out["id"] = row["charge_id"]
    out |= {k: row[k] for k in ("changed", "unbilled_additional", "threshold_reached")}
    return out


class GroupCommit:
    """Queues holds and settlements; up to `max_inflight` batches commit at once.

    One per process (per Ledger). Batches start on demand, without a timer:
    a lone caller is sent at once, and callers arriving while batches are
    committing wait for the next one, so batches grow exactly with load.
    """

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 512, max_inflight: int = 2) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        self.pool = pool
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._queue: list[Item] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # What was committed how, for tests, benchmarks and metrics.
        self.batches = 0
        self.items = 0
        self.retried_alone = 0

    async def hold(
        self,
        team: str,
        key: str,
        action: str,
        quantity: int,
        tokens: int,
        at: datetime,
        job_id: str | None,
        lead_id: str | None,
    ) -> Row:
        done: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._submit(HoldItem(team, key, action, quantity, tokens, at, job_id, lead_id, done))
        return await done

    async def settle(self, charge_id: int, state: str, at: datetime) -> Row:
        done: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._submit(SettleItem(charge_id, state, at, done))
        return await done

    def _submit(self, item: Item) -> None:
        self._queue.append(item)
        if self._inflight < self.max_inflight:
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._commit(self._take())
        finally:
            self._inflight -= 1

    def _take(self) -> list[Item]:
        """The next batch, in arrival order. A hold whose (team, key), or a settlement
        whose charge, is already in it waits for the next batch: tokens_apply sees
        each once, and the repeat then answers as a replay, as it would alone."""
        batch: list[Item] = []
        seen: set[tuple[str, str] | int] = set()
        rest: list[Item] = []
        for item in self._queue:
            mark = (item.team, item.key) if isinstance(item, HoldItem) else item.charge_id
            if len(batch) >= self.max_batch or mark in seen:
                rest.append(item)
            else:
                seen.add(mark)
                batch.append(item)
        self._queue = rest
        return batch

    async def _commit(self, batch: list[Item]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            if len(batch) == 1:
                await _apply_alone(self.pool, batch[0])
                return
            try:
                await _apply_batch(self.pool, batch)
            except Exception as exc:  # the whole batch failed: each item again, alone
                log.warning("group_commit_retry_alone", items=len(batch), error=repr(exc))
                self.retried_alone += len(batch)
                await asyncio.gather(*(_apply_alone(self.pool, item) for item in batch))
        finally:
            for item in batch:  # cancelled (loop shutting down): nobody waits forever
                if not item.done.done():
                    item.done.cancel()


async def _apply_batch(pool: asyncpg.Pool, batch: Sequence[Item]) -> None:
    settles = [i for i in batch if isinstance(i, SettleItem)]
    holds = [i for i in batch if isinstance(i, HoldItem)]
    rows = await pool.fetch(
        q("apply"),
        [s.charge_id for s in settles],
        [s.state for s in settles],
        [s.at for s in settles],
        [h.team for h in holds],
        [h.key for h in holds],
        [h.action for h in holds],
        [h.quantity for h in holds],
        [h.tokens for h in holds],
        [h.at for h in holds],
        [h.job_id for h in holds],
        [h.lead_id for h in holds],
    )
    for row in rows:
        pos = row["pos"] - 1
        item: Item = settles[pos] if row["kind"] == "settle" else holds[pos]
        if item.done.done():
            continue
        if row["err_code"] is not None:
            item.done.set_exception(item_error(item, row["err_code"], row["err_message"]))
        elif isinstance(item, HoldItem):
            item.done.set_result(hold_row(row))
        else:
            item.done.set_result(settle_row(row))
    for item in batch:  # every item has a row; this only guards against a bug
        if not item.done.done():
            item.done.set_exception(RuntimeError("tokens_apply returned no row for this item"))


async def _apply_one(pool: asyncpg.Pool, item: Item) -> None:
    """One item through the single-charge functions (which raise their TK0xx errors)."""
    if isinstance(item, HoldItem):
        row = await pool.fetchrow(
            q("hold"),
            item.team,
            item.key,
            item.action,
            item.quantity,
            item.tokens,
            item.at,
            item.job_id,
            item.lead_id,
        )
    else:
        row = await pool.fetchrow(q("settle"), item.charge_id, item.state, item.at)
    assert row is not None
    if not item.done.done():
        item.done.set_result(dict(row))


async def _apply_alone(pool: asyncpg.Pool, item: Item) -> None:
    try:
        await _apply_one(pool, item)
    except Exception as exc:
        if not item.done.done():
            item.done.set_exception(exc)
