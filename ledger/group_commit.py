"""Group commit: the concurrent holds and settlements of one process, in one transaction.

Every hold and settlement goes to Postgres through `apply`, one `tokens_apply`
call (sql/holds.sql, where the hold and settle rules live). One commit per
charge caps a hot team at what one Postgres connection can commit in a row
(two commits per search: the hold and the capture). So a caller's hold or
settlement is queued, and whatever queued while the previous batch was
committing goes as one call: one round trip, one transaction, one update of
each team's month row, however many charges it carries. A lone caller goes
at once, as a batch of one: nothing waits for a timer. Nothing is answered
before its batch has committed, so durability is the same as one commit per
charge.

Each item keeps its own outcome: its own idempotency key, its own refusal
(the one hold that did not fit is refused, not its batch) and its own error.
If a batch fails as a whole (a deadlock, a lost connection, a bug), every
item of it is applied again alone; tokens_apply is idempotent, so an item
that did commit just replays, and one bad item can only fail itself.

A caller that is cancelled while waiting does not cancel the batch: its
item commits or not with the others, exactly like a reply lost on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import structlog

from db.queries import q
from ledger.errors import TokensError, detail_of, from_code
from ledger.results import ChargeRow

log = structlog.get_logger("tokens.ledger")

Row = dict[str, Any]


class Fetcher(Protocol):
    """A pool or a connection (in a transaction of the caller's)."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


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


@dataclass
class SettleItem:
    charge_id: int
    state: str
    at: datetime


Item = HoldItem | SettleItem
Outcome = Row | TokensError

# The columns of a hold's answer and of a settlement's (the charge, plus its extras).
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


def hold_row(row: asyncpg.Record) -> Row:
    return {k: row[k] for k in HOLD_COLUMNS}


def settle_row(row: asyncpg.Record) -> Row:
    out = {k: row[k] for k in CHARGE_COLUMNS}
    out["id"] = row["charge_id"]
    out |= {k: row[k] for k in ("changed", "unbilled_additional", "threshold_reached")}
    return out


async def apply(conn: Fetcher, items: Sequence[Item]) -> list[Outcome]:
    """One tokens_apply call: each item's answer, or its typed error, in the items' order.

    Only a failure of the call as a whole (a CHECK, a lost connection) raises."""
    settles = [i for i in items if isinstance(i, SettleItem)]
    holds = [i for i in items if isinstance(i, HoldItem)]
    rows = await conn.fetch(
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
    # Where the n-th settlement and the n-th hold stand in `items`.
    where = {
        "settle": [n for n, i in enumerate(items) if isinstance(i, SettleItem)],
        "hold": [n for n, i in enumerate(items) if isinstance(i, HoldItem)],
    }
    out: list[Outcome | None] = [None] * len(items)
    for row in rows:
        if row["err_code"] is not None:
            outcome: Outcome = from_code(
                row["err_code"], row["err_message"], detail_of(row["err_detail"])
            )
        elif row["kind"] == "settle":
            outcome = settle_row(row)
        else:
            outcome = hold_row(row)
        out[where[row["kind"]][row["pos"] - 1]] = outcome
    answered = [o for o in out if o is not None]
    if len(answered) != len(items):  # every item has a row; this only guards against a bug
        raise RuntimeError("tokens_apply returned no row for an item")
    return answered


async def apply_one(conn: Fetcher, item: Item) -> Row:
    """One item through `apply`: its answer, or its error raised."""
    (outcome,) = await apply(conn, [item])
    if isinstance(outcome, TokensError):
        raise outcome
    return outcome


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
        self._queue: list[tuple[Item, asyncio.Future[Row]]] = []
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
        return await self._submit(
            HoldItem(team, key, action, quantity, tokens, at, job_id, lead_id)
        )

    async def settle(self, charge_id: int, state: str, at: datetime) -> Row:
        return await self._submit(SettleItem(charge_id, state, at))

    def _submit(self, item: Item) -> asyncio.Future[Row]:
        done: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._inflight < self.max_inflight:
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return done

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._commit(self._take())
        finally:
            self._inflight -= 1

    def _take(self) -> list[tuple[Item, asyncio.Future[Row]]]:
        """The next batch, in arrival order. A hold whose (team, key), or a settlement
        whose charge, is already in it waits for the next batch: tokens_apply sees
        each once, and the repeat then answers as a replay, as it would alone."""
        batch: list[tuple[Item, asyncio.Future[Row]]] = []
        seen: set[tuple[str, str] | int] = set()
        rest: list[tuple[Item, asyncio.Future[Row]]] = []
        for queued in self._queue:
            item = queued[0]
            mark = (item.team, item.key) if isinstance(item, HoldItem) else item.charge_id
            if len(batch) >= self.max_batch or mark in seen:
                rest.append(queued)
            else:
                seen.add(mark)
                batch.append(queued)
        self._queue = rest
        return batch

    async def _commit(self, batch: list[tuple[Item, asyncio.Future[Row]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            try:
                outcomes = await apply(self.pool, [item for item, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _answer(batch[0][1], exc)
                    return
                # The whole batch failed: each item again, alone.
                log.warning("group_commit_retry_alone", items=len(batch), error=repr(exc))
                self.retried_alone += len(batch)
                await asyncio.gather(*(self._commit_alone(item, done) for item, done in batch))
                return
            for (_, done), outcome in zip(batch, outcomes, strict=True):
                _answer(done, outcome)
        finally:
            for _, done in batch:  # cancelled (loop shutting down): nobody waits forever
                if not done.done():
                    done.cancel()

    async def _commit_alone(self, item: Item, done: asyncio.Future[Row]) -> None:
        try:
            outcome: Outcome | BaseException = (await apply(self.pool, [item]))[0]
        except Exception as exc:
            outcome = exc
        _answer(done, outcome)


def _answer(done: asyncio.Future[Row], outcome: Outcome | BaseException) -> None:
    if done.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
