"""Group commit: the concurrent holds and settlements of one process, in one transaction.

Every hold and settlement goes to Postgres through `apply`, one `tokens_apply`
call (sql/holds.sql, where the hold and settle rules live). One commit per
charge caps a hot team at what one Postgres connection can commit in a row
(two commits per search: the hold and the capture), and each call has a
fixed cost in Postgres whatever it carries. So a caller's hold or
settlement is queued, and what queued while batches were committing goes in
as few calls as keep the connections busy (GroupCommit says how many): one
round trip, one transaction, one update of each team's month row per batch,
however many charges it carries. A lone caller goes at once, as a batch of
one: nothing waits for a timer. Nothing is answered before its batch has
committed, so durability is the same as one commit per charge.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import structlog

from db.queries import q
from ledger.errors import TokensError, detail_of, from_code

log = structlog.get_logger("tokens.ledger")

# A row of tokens_apply (an asyncpg Record; tests may answer with dicts): the
# hold's or the settled charge's columns, read by name by the Ledger.
Row = Mapping[str, Any]


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
    member: str | None = None


@dataclass
class SettleItem:
    charge_id: int
    state: str
    at: datetime


Item = HoldItem | SettleItem
Outcome = Row | TokensError


async def apply(conn: Fetcher, items: Sequence[Item]) -> list[Outcome]:
    """One tokens_apply call: each item's answer, or its typed error, in the items' order.

    Only a failure of the call as a whole (a CHECK, a lost connection) raises."""
    settles: list[SettleItem] = []
    holds: list[HoldItem] = []
    # Where the n-th settlement and the n-th hold stand in `items`.
    where: dict[str, list[int]] = {"settle": [], "hold": []}
    for n, item in enumerate(items):
        if isinstance(item, SettleItem):
            settles.append(item)
            where["settle"].append(n)
        else:
            holds.append(item)
            where["hold"].append(n)
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
        [h.member for h in holds],
    )
    out: list[Outcome | None] = [None] * len(items)
    for row in rows:
        if row["err_code"] is not None:
            outcome: Outcome = from_code(
                row["err_code"], row["err_message"], detail_of(row["err_detail"])
            )
        else:
            outcome = row
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


@dataclass
class _Queued:
    item: Item
    done: asyncio.Future[Row]
    team: str | None  # None: a settlement whose team this process does not know
    seq: int  # arrival order


Batch = list[_Queued]


class GroupCommit:
    """Queues holds and settlements and commits them in batches, several at once.

    One per process (per Ledger). Batches start on demand, without a timer:
    what queued during one turn of the event loop is formed into batches at the
    end of that turn. When no batch is in flight, whatever waits goes at once
    (a lone caller: a batch of one). While batches are in flight, another one
    starts only for `min_batch` waiting items or more, and the waiting items are
    spread over as many batches as keep each at `min_batch` or more, up to
    `max_inflight` in flight. So batches in flight follow the callers: one at a
    time under light load (what arrives meanwhile waits and goes together), two
    under load, each large enough to share its round trip and commit.

    Why two: with one batch in flight this process and Postgres take turns
    (the callers answer, then send again), so one of them is always idle. With
    two, one batch is answered and the next formed here while the other runs
    in Postgres. Each batch has a fixed cost in Postgres before its first
    item, so more or smaller batches lose what the overlap wins, and the
    overlap needs an idle core (docs/decisions.md, "Two batches in flight").
    `max_inflight` is capped by the pool's size; raise it where Postgres has
    cores to spare.

    Batches are partitioned by team: a team's items are in at most one batch
    in flight, and go together. Batches of one team would serialize on its
    month row anyway; this way no batch of this process waits for another's
    lock (holding the months it locked first meanwhile). A settlement is routed
    by the team it is given (the Ledger knows it for the holds it made); one
    without a team may join any batch. `by_team=False` (one commit per call)
    lets every item go alone at once.
    """

    DEFAULT_INFLIGHT = 2

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 512,
        max_inflight: int | None = None,
        min_batch: int = 16,
        by_team: bool = True,
    ) -> None:
        if max_inflight is None:
            max_inflight = min(self.DEFAULT_INFLIGHT, pool.get_max_size())
        if min(max_batch, max_inflight, min_batch) < 1:
            raise ValueError("max_batch, max_inflight and min_batch must be at least 1")
        self.pool = pool
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.min_batch = min_batch
        self.by_team = by_team
        self._queue: list[_Queued] = []
        self._seq = 0
        self._forming = False  # a _form is scheduled for the end of this loop turn
        self._inflight = 0
        self._busy: set[str] = set()  # teams with a batch in flight
        self._tasks: set[asyncio.Task[None]] = set()
        # What was committed how, for tests, benchmarks and metrics.
        self.batches = 0
        self.items = 0
        self.retried_alone = 0
        self.most_inflight = 0

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
        member: str | None = None,
    ) -> Row:
        return await self._submit(
            HoldItem(team, key, action, quantity, tokens, at, job_id, lead_id, member), team
        )

    async def settle(
        self, charge_id: int, state: str, at: datetime, team: str | None = None
    ) -> Row:
        """`team`: the charge's team, when known (a hint for routing only)."""
        return await self._submit(SettleItem(charge_id, state, at), team)

    def _submit(self, item: Item, team: str | None) -> asyncio.Future[Row]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Row] = loop.create_future()
        self._seq += 1
        self._queue.append(_Queued(item, done, team, self._seq))
        if not self._forming:
            self._forming = True
            loop.call_soon(self._form)
        return done

    def _form(self) -> None:
        """Start the batches that the waiting items make now; the others wait for a
        batch to commit (a free connection, their team's batch, or more company)."""
        self._forming = False
        ready = [w for w in self._queue if w.team not in self._busy]
        # How many batches: as many as keep each at min_batch items or more;
        # with nothing in flight, one at least.
        count = min(self.max_inflight - self._inflight, len(ready) // self.min_batch)
        if self._inflight == 0:
            count = max(count, 1)
        if count < 1 or not ready:
            return
        batches = [ready] if count == 1 else self._spread(ready, count)
        taken: set[int] = set()  # the seq of the items that go now
        loop = asyncio.get_running_loop()
        for batch in batches:
            # tokens_apply sees a (team, key) or a charge once per call: a repeat
            # waits for a later batch, and then answers as a replay, as it would
            # alone. Beyond max_batch, items wait too.
            marks: set[tuple[str, str] | int] = set()
            going: Batch = []
            for w in batch:
                mark = _mark(w.item)
                if mark not in marks and len(going) < self.max_batch:
                    marks.add(mark)
                    going.append(w)
                    taken.add(w.seq)
            if not going:
                continue
            teams = {w.team for w in going if w.team is not None} if self.by_team else set()
            self._busy |= teams
            self._inflight += 1
            self.most_inflight = max(self.most_inflight, self._inflight)
            task = loop.create_task(self._run(going, teams))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(taken) == len(self._queue):
            self._queue = []
        else:
            self._queue = [w for w in self._queue if w.seq not in taken]

    def _spread(self, ready: Batch, count: int) -> list[Batch]:
        """`ready` over `count` batches, evenly; each in arrival order."""
        # A team's items go together (in arrival order): one part per team, or
        # per item where there is no team to keep together.
        parts: list[Batch] = []
        by_team: dict[str, Batch] = {}
        for w in ready:
            if w.team is None or not self.by_team:
                parts.append([w])
            else:
                by_team.setdefault(w.team, []).append(w)
        parts += by_team.values()
        # Largest parts first, each into the smallest batch.
        batches: list[Batch] = [[] for _ in range(count)]
        for part in sorted(parts, key=len, reverse=True):
            min(batches, key=len).extend(part)
        # Arrival order in each batch: of two items with one mark, the first goes.
        return [sorted(b, key=lambda w: w.seq) for b in batches]

    async def _run(self, batch: Batch, teams: set[str]) -> None:
        try:
            await self._commit(batch)
        finally:
            self._inflight -= 1
            self._busy -= teams
            # Its callers run first (their wake-ups were scheduled when they were
            # answered), so what they send next is in the queue when _form runs.
            if self._queue and not self._forming:
                self._forming = True
                asyncio.get_running_loop().call_soon(self._form)

    async def _commit(self, batch: Batch) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            try:
                outcomes = await apply(self.pool, [w.item for w in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _answer(batch[0].done, exc)
                    return
                # The whole batch failed: each item again, alone.
                log.warning("group_commit_retry_alone", items=len(batch), error=repr(exc))
                self.retried_alone += len(batch)
                await asyncio.gather(*(self._commit_alone(w.item, w.done) for w in batch))
                return
            for w, outcome in zip(batch, outcomes, strict=True):
                _answer(w.done, outcome)
        finally:
            for w in batch:  # cancelled (loop shutting down): nobody waits forever
                if not w.done.done():
                    w.done.cancel()

    async def _commit_alone(self, item: Item, done: asyncio.Future[Row]) -> None:
        try:
            outcome: Outcome | BaseException = (await apply(self.pool, [item]))[0]
        except Exception as exc:
            outcome = exc
        _answer(done, outcome)


def _mark(item: Item) -> tuple[str, str] | int:
    return (item.team, item.key) if isinstance(item, HoldItem) else item.charge_id


def _answer(done: asyncio.Future[Row], outcome: Outcome | BaseException) -> None:
    if done.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
