"""Group commit: many holds and settlements in one transaction, each with its own outcome."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.queries import q
from ledger.catalog import DEFAULT_CATALOG
from ledger.errors import (
    BadInput,
    ChargeAlreadySettled,
    IdempotencyMismatch,
    TokensError,
    UnknownCharge,
    UnknownTeam,
    translate,
)
from ledger.group_commit import GroupCommit
from ledger.service import Ledger
from tests.clock import at
from tests.factories import make_team

T0 = at("2026-03-10T12:00:00")
T_NEXT = at("2026-04-10T12:00:00")  # the following billing month
ANCHOR = at("2026-03-01")

# The single-item wrappers of tokens_apply (for psql; the Ledger calls tokens_apply).
HOLD = "SELECT * FROM tokens_hold($1, $2, $3, $4, $5, $6, $7, $8)"
SETTLE = """SELECT (s.charge).*, s.changed, s.unbilled_additional, s.threshold_reached
            FROM tokens_settle($1, $2, $3) s"""

# -- one batch gives each item what one-at-a-time would ----------------------

holds = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "ghost"]),  # team
        st.sampled_from([f"k{n}" for n in range(5)] + ["p0", "p3"]),  # key (reuse on purpose)
        st.sampled_from(["enrich", "debounce"]),
        st.integers(1, 2),  # quantity
        st.integers(1, 120),  # tokens
        st.sampled_from([T0, T_NEXT]),
    ),
    max_size=12,
    unique_by=lambda h: (h[0], h[1]),  # group commit sends a (team, key) once per batch
)
settles = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from(["captured", "released"])),
    max_size=5,
    unique_by=lambda s: s[0],  # group commit sends a charge once per batch
)


async def _setup(conn: asyncpg.Connection) -> list[int]:
    """Team a: trial (100 free, no additional). Team b: 250 free + 60 additional.
    Charges p0..p2 held on b, p3 captured on a; returns their ids."""
    await conn.execute(q("set_team"), "a", "trial", 1, "month", ANCHOR, None, T0)
    await conn.execute(q("set_team"), "b", "email_outreach", 1, "month", ANCHOR, None, T0)
    await conn.execute("UPDATE teams SET additional_limit = 60 WHERE id = 'b'")
    ids = []
    for team, key, tokens in (("b", "p0", 30), ("b", "p1", 30), ("b", "p2", 30), ("a", "p3", 10)):
        row = await conn.fetchrow(HOLD, team, key, "enrich", 1, tokens, T0, None, None)
        assert row is not None
        ids.append(row["charge_id"])
    await conn.execute(SETTLE, ids[3], "captured", T0)
    return ids


def _hold_outcome(row: Any, known: list[int]) -> dict[str, Any]:
    cid = row["charge_id"]
    return {
        "charge": cid if cid in known else ("new" if cid is not None else None),
        **{
            k: row[k]
            for k in (
                "state",
                "replayed",
                "tokens",
                "free_tokens",
                "additional_tokens",
                "period_start",
                "free_available",
                "additional_available",
            )
        },
    }


async def _snapshot(conn: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
    months = await conn.fetch(
        "SELECT team_id, period_start, free_granted, free_held, free_spent, additional_held,"
        " additional_spent FROM billing_months ORDER BY 1, 2"
    )
    charges = await conn.fetch(
        "SELECT team_id, idempotency_key, period_start, action, quantity, tokens, free_tokens,"
        " additional_tokens, state, settled_at FROM charges ORDER BY 1, 2"
    )
    return [tuple(r) for r in months], [tuple(r) for r in charges]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(holds=holds, settles=settles)
async def test_one_batch_equals_one_at_a_time(
    ledger: Ledger,
    holds: list[tuple[str, str, str, int, int, datetime]],
    settles: list[tuple[int, str]],
) -> None:
    """The documented order: settlements in order, then holds team by team."""
    async with ledger.pool.acquire() as conn:
        outer = conn.transaction()
        await outer.start()
        try:
            known = await _setup(conn)
            s_ids = [known[i] if i < 4 else 10**12 for i, _ in settles]
            s_states = [s for _, s in settles]

            batch: dict[tuple[str, int], Any] = {}
            rows = await conn.fetch(
                q("apply"),
                s_ids,
                s_states,
                [T0] * len(settles),
                *([list(col) for col in zip(*holds, strict=True)] or [[]] * 6),
                [None] * len(holds),
                [None] * len(holds),
                [None] * len(holds),
            )
            for r in rows:
                if r["err_code"] is not None:
                    batch[(r["kind"], r["pos"])] = r["err_code"]
                elif r["kind"] == "hold":
                    batch[("hold", r["pos"])] = _hold_outcome(r, known)
                else:
                    batch[("settle", r["pos"])] = (r["state"], r["changed"])
            after_batch = await _snapshot(conn)
        finally:
            await outer.rollback()
    assert len(batch) == len(holds) + len(settles)

    # Run B, in a fresh transaction: the same items, one function call each.
    async with ledger.pool.acquire() as conn:
        outer = conn.transaction()
        await outer.start()
        try:
            known_b = await _setup(conn)
            single: dict[tuple[str, int], Any] = {}
            for pos, (cid_index, state) in enumerate(settles, start=1):
                cid = known_b[cid_index] if cid_index < 4 else 10**12
                try:
                    async with conn.transaction():
                        r = await conn.fetchrow(SETTLE, cid, state, T0)
                    assert r is not None
                    single[("settle", pos)] = (r["state"], r["changed"])
                except asyncpg.PostgresError as exc:
                    single[("settle", pos)] = exc.sqlstate
            order = sorted(range(1, len(holds) + 1), key=lambda p: (holds[p - 1][0], p))
            for pos in order:
                team, key, action, quantity, tokens, when = holds[pos - 1]
                try:
                    async with conn.transaction():
                        r = await conn.fetchrow(
                            HOLD, team, key, action, quantity, tokens, when, None, None
                        )
                    single[("hold", pos)] = _hold_outcome(r, known_b)
                except asyncpg.PostgresError as exc:
                    single[("hold", pos)] = exc.sqlstate
            after_single = await _snapshot(conn)
        finally:
            await outer.rollback()

    # Charge ids differ between the two runs (the sequence moved on); map them.
    rename = dict(zip(known_b, known, strict=True))
    for v in single.values():
        if isinstance(v, dict) and v["charge"] in rename:
            v["charge"] = rename[v["charge"]]
    assert batch == single
    assert after_batch == after_single


# -- through the Ledger: batching, isolation, failures -------------------------


async def test_concurrent_holds_share_transactions(ledger: Ledger) -> None:
    await make_team(ledger, "hot", seats=4)  # 1,000 free tokens
    before = ledger.group.batches
    held = await asyncio.gather(
        *(ledger.hold("hot", "enrich", 1, key=f"j{i}", at=T0) for i in range(64))
    )
    assert len({h.charge_id for h in held}) == 64 and not any(h.refused for h in held)
    assert ledger.group.batches - before < 64 / 4  # at least 4 holds per commit on average
    settled = await asyncio.gather(*(ledger.capture(h.charge_id or 0, at=T0) for h in held))
    assert all(s.changed and s.charge.state == "captured" for s in settled)
    section = await ledger.billing("hot", at=T0)
    assert (section.free_spent, section.held) == (640, 0)


async def test_the_one_hold_that_does_not_fit_is_refused_alone(ledger: Ledger) -> None:
    await make_team(ledger, "small", limit=5)  # 250 free + 5 additional
    first = await ledger.hold("small", "enrich", 24, key="big", at=T0)  # 240
    assert not first.refused
    results = await asyncio.gather(
        ledger.hold("small", "enrich", 1, key="a", at=T0),  # 10: fits (10 free left)
        ledger.hold("small", "enrich", 1, key="b", at=T0),  # 10: only 5 left -> refused
        ledger.hold("small", "debounce", 5, key="c", at=T0),  # 5: fits in additional
    )
    assert [r.state for r in results] == ["held", "refused", "held"]
    refused = results[1]
    assert (refused.key, refused.charge_id) == ("b", None)
    assert (refused.free_available, refused.additional_available) == (0, 5)
    assert (results[2].free_tokens, results[2].additional_tokens) == (0, 5)


async def test_one_bad_item_fails_only_its_caller(ledger: Ledger) -> None:
    await make_team(ledger, "t")
    done = await ledger.hold("t", "enrich", 1, key="used", at=T0)
    before = ledger.group.batches
    outcomes = await asyncio.gather(
        ledger.hold("t", "enrich", 1, key="fresh", at=T0),
        ledger.hold("t", "debounce", 1, key="used", at=T0),  # same key, other action
        ledger.hold("nobody", "enrich", 1, key="x", at=T0),
        ledger.capture(10**12, at=T0),
        ledger.capture(done.charge_id or 0, at=T0),
        return_exceptions=True,
    )
    fresh, mismatch, unknown_team, unknown_charge, captured = outcomes
    assert not isinstance(fresh, BaseException) and fresh.state == "held"
    assert isinstance(mismatch, IdempotencyMismatch) and "used" in str(mismatch)
    assert isinstance(unknown_team, UnknownTeam) and unknown_team.team == "nobody"
    assert isinstance(unknown_charge, UnknownCharge) and unknown_charge.charge_id == 10**12
    assert not isinstance(captured, BaseException) and captured.changed
    # All five went in one tokens_apply call, and nothing needed the item-by-item fallback.
    assert (ledger.group.batches - before, ledger.group.retried_alone) == (1, 0)


async def test_a_failed_batch_is_applied_again_item_by_item(ledger: Ledger) -> None:
    """A batch that Postgres rejects as a whole (here: a CHECK violated by one item,
    which the Ledger's validation would never let through) costs only that item."""
    await make_team(ledger, "t")
    group = GroupCommit(ledger.pool)
    good = [group.hold("t", f"g{i}", "enrich", 1, 10, T0, None, None) for i in range(3)]
    bad = group.hold("t", "bad", "enrich", 1, 0, T0, None, None)  # tokens must be > 0
    *rows, failure = await asyncio.gather(*good, bad, return_exceptions=True)
    assert isinstance(failure, asyncpg.CheckViolationError)
    assert [r["state"] for r in rows] == ["held", "held", "held"]  # type: ignore[index]
    keys = await ledger.pool.fetch(
        "SELECT idempotency_key FROM charges WHERE team_id = 't' ORDER BY 1"
    )
    assert [k[0] for k in keys] == ["g0", "g1", "g2"]
    assert (group.batches, group.retried_alone) == (1, 4)  # one batch, then each item alone


async def test_a_cancelled_caller_does_not_cancel_its_batch(ledger: Ledger) -> None:
    await make_team(ledger, "t")
    gone = asyncio.create_task(ledger.hold("t", "enrich", 1, key="gone", at=T0))
    stays = asyncio.create_task(ledger.hold("t", "enrich", 1, key="stays", at=T0))
    await asyncio.sleep(0)  # one turn of the loop: both are queued, nothing sent yet
    gone.cancel()
    assert (await stays).state == "held"
    with pytest.raises(asyncio.CancelledError):
        await gone
    again = await ledger.hold("t", "enrich", 1, key="gone", at=T0)
    assert again.replayed and again.state == "held"  # it had committed with the batch


async def test_processes_batching_at_once_never_deadlock(ledger: Ledger, database_url: str) -> None:
    """Four 'processes' (a Ledger and pool each) hold and capture across the same
    teams in opposite orders while the expiry sweep runs: no deadlock, no drift."""
    teams = [f"t{n}" for n in range(6)]
    for t in teams:
        await make_team(ledger, t, seats=40)
    pools = [await asyncpg.create_pool(database_url, min_size=2, max_size=4) for _ in range(4)]
    try:
        ledgers = [Ledger(p, DEFAULT_CATALOG) for p in pools]

        async def work(n: int, led: Ledger) -> int:
            order = teams if n % 2 else teams[::-1]
            helds = await asyncio.gather(
                *(
                    led.hold(order[i % len(order)], "enrich", 1, key=f"p{n}-{i}", at=T0)
                    for i in range(60)
                )
            )
            await asyncio.gather(
                *(
                    (led.capture if i % 3 else led.release)(h.charge_id or 0, at=T0)
                    for i, h in enumerate(helds)
                )
            )
            return len(helds)

        async def sweep() -> None:
            for _ in range(5):
                await ledger.expire_holds(older_than=T0, at=T0)  # none is older: scans only

        counts = await asyncio.gather(*(work(n, led) for n, led in enumerate(ledgers)), sweep())
    finally:
        for p in pools:
            await p.close()
    assert counts[:4] == [60, 60, 60, 60]
    states = await ledger.pool.fetch("SELECT state, count(*) FROM charges GROUP BY 1 ORDER BY 1")
    assert {r["state"]: r["count"] for r in states} == {"captured": 160, "released": 80}
    assert await ledger.drift() == []


async def test_two_processes_holding_the_same_keys_make_one_charge_each(
    ledger: Ledger, database_url: str
) -> None:
    """The same 30 keys from two 'processes' at once: one charge per key, both
    callers get it (one of them through the unique index, ON CONFLICT)."""
    await make_team(ledger, "t", seats=4)
    pools = [await asyncpg.create_pool(database_url, min_size=2, max_size=4) for _ in range(2)]
    try:
        a, b = (Ledger(p, DEFAULT_CATALOG) for p in pools)
        results = await asyncio.gather(
            *(led.hold("t", "enrich", 1, key=f"k{i}", at=T0) for i in range(30) for led in (a, b))
        )
    finally:
        for p in pools:
            await p.close()
    by_key: dict[str, set[int | None]] = {}
    for r in results:
        by_key.setdefault(r.key, set()).add(r.charge_id)
    assert all(len(ids) == 1 and None not in ids for ids in by_key.values())
    assert sum(not r.replayed for r in results) == 30
    assert (await ledger.billing("t", at=T0)).free_held == 300


async def test_the_same_charge_captured_twice_at_once_changes_once(ledger: Ledger) -> None:
    await make_team(ledger, "t")
    held = await ledger.hold("t", "enrich", 1, key="k", at=T0)
    assert held.charge_id is not None
    first, second = await asyncio.gather(
        ledger.capture(held.charge_id, at=T0), ledger.capture(held.charge_id, at=T0)
    )
    assert (first.changed, second.changed) == (True, False)
    assert (await ledger.billing("t", at=T0)).free_spent == 10


# -- one path: every route through tokens_apply, one error translation ----------


async def test_every_route_goes_through_tokens_apply(ledger: Ledger) -> None:
    """Without the single-item wrappers, every Ledger route still works: none uses them."""
    await ledger.pool.execute(
        "DROP FUNCTION tokens_hold(text, text, text, integer, bigint, timestamptz, text, text);"
        "DROP FUNCTION tokens_settle(bigint, text, timestamptz)"
    )
    await make_team(ledger, "t", limit=50)
    alone = await ledger.hold("t", "enrich", 1, key="alone", at=T0)
    batch = await asyncio.gather(
        *(ledger.hold("t", "enrich", 1, key=f"b{i}", at=T0) for i in range(5))
    )
    assert alone.state == "held" and all(h.state == "held" for h in batch)
    assert (await ledger.capture(alone.charge_id or 0, at=T0)).changed
    assert (await ledger.release(batch[0].charge_id or 0, at=T0)).changed
    held, settled = await ledger.charge("t", "debounce", 3, key="c", at=T0)
    assert settled is not None and settled.charge.state == "captured"
    again, none = await ledger.charge("t", "debounce", 3, key="c", at=T_NEXT)
    assert (again.replayed, again.charge_id, none) == (True, held.charge_id, None)
    expired = await ledger.expire_holds(older_than=T_NEXT, at=T_NEXT)
    assert sorted(c.id for c in expired) == sorted(h.charge_id or 0 for h in batch[1:])
    with pytest.raises(ChargeAlreadySettled) as settled_err:
        await ledger.capture(batch[1].charge_id or 0, at=T_NEXT)
    assert (settled_err.value.charge_id, settled_err.value.state) == (batch[1].charge_id, "expired")


async def _raised(conn: asyncpg.Connection, sql: str, *args: Any) -> TokensError:
    """The typed error a single-item wrapper raises (through `translate`)."""
    try:
        async with conn.transaction():
            await conn.fetch(sql, *args)
    except asyncpg.PostgresError as exc:
        mine = translate(exc)
        assert mine is not None, exc
        return mine
    raise AssertionError(f"no error from {sql} {args}")


def _seen(err: TokensError) -> tuple[Any, ...]:
    ids = ("team", "key", "charge_id", "state")
    return (type(err), str(err), *(getattr(err, n, None) for n in ids))


async def test_an_error_is_the_same_raised_by_a_wrapper_or_given_by_a_batch(
    ledger: Ledger,
) -> None:
    """tokens_apply's err_code/err_detail and a wrapper's SQLSTATE/DETAIL make the
    same typed error, with the same ids and message."""
    await make_team(ledger, "t")
    used = await ledger.hold("t", "enrich", 1, key="used", at=T0)
    done = await ledger.hold("t", "enrich", 1, key="done", at=T0)
    await ledger.release(done.charge_id or 0, at=T0)
    batched = await asyncio.gather(
        ledger.hold("ghost", "enrich", 1, key="k", at=T0),
        ledger.hold("t", "debounce", 2, key="used", at=T0),
        ledger.capture(10**12, at=T0),
        ledger.capture(done.charge_id or 0, at=T0),
        return_exceptions=True,
    )
    async with ledger.pool.acquire() as conn:
        raised = [
            await _raised(conn, HOLD, "ghost", "k", "enrich", 1, 10, T0, None, None),
            await _raised(conn, HOLD, "t", "used", "debounce", 2, 2, T0, None, None),
            await _raised(conn, SETTLE, 10**12, "captured", T0),
            await _raised(conn, SETTLE, done.charge_id, "captured", T0),
        ]
        bad_state = await _raised(conn, SETTLE, done.charge_id, "spent", T0)
    assert all(isinstance(b, TokensError) for b in batched), batched
    assert [_seen(b) for b in batched] == [_seen(r) for r in raised]  # type: ignore[arg-type]
    unknown_team, mismatch, unknown_charge, settled = raised
    assert isinstance(unknown_team, UnknownTeam) and unknown_team.team == "ghost"
    assert isinstance(mismatch, IdempotencyMismatch)
    assert (mismatch.team, mismatch.key, mismatch.charge_id) == ("t", "used", used.charge_id)
    assert "enrich x1" in str(mismatch) and "debounce x2" in str(mismatch)
    assert isinstance(unknown_charge, UnknownCharge) and unknown_charge.charge_id == 10**12
    assert isinstance(settled, ChargeAlreadySettled)
    assert (settled.charge_id, settled.state) == (done.charge_id, "released")
    assert "already released, it cannot be captured" in str(settled)
    assert type(bad_state) is BadInput and "cannot settle a charge as spent" in str(bad_state)
