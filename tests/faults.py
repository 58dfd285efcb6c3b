"""Real database faults for the money path's tests: a billing month locked by
another transaction (as bill-making locks it), and captures Postgres refuses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

# The message of a refused capture, to find it in a job's result.
CAPTURE_FAULT = "could not extend file: No space left on device"


class MonthLock:
    """Another session's transaction holding a team's billing months, FOR NO KEY
    UPDATE as bill-making takes them: a capture of that team waits for it."""

    def __init__(self, pool: asyncpg.Pool, team: str) -> None:
        self.pool = pool
        self.team = team
        self.conn: Any = None
        self.tx: Any = None
        self.task: asyncio.Task[None] | None = None

    async def take(self) -> None:
        self.conn = await self.pool.acquire()
        self.tx = self.conn.transaction()
        await self.tx.start()
        # In a deadlock the session whose deadlock_timeout runs out first is the one
        # Postgres cancels: this one never is (the other side's check finds the cycle).
        await self.conn.execute("SET LOCAL deadlock_timeout = '60s'")
        await self.conn.execute(
            "SELECT 1 FROM billing_months WHERE team_id = $1 FOR NO KEY UPDATE", self.team
        )

    def later(self, *steps: Callable[[], Awaitable[Any]]) -> None:
        """Run `steps` one after the other, in the background."""

        async def run() -> None:
            for step in steps:
                await step()

        self.task = asyncio.get_running_loop().create_task(run())

    async def wait_for_a_waiter(self) -> None:
        """Until another session waits for a lock this transaction holds."""
        pid = self.conn.get_server_pid()
        query = (
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid)))"
        )
        # Postgres signals no waiter: pg_stat_activity is polled.
        while not await self.pool.fetchval(query, pid):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def lock_charge(self, charge_id: int) -> None:
        await self.conn.execute("SELECT 1 FROM charges WHERE id = $1 FOR UPDATE", charge_id)

    async def commit(self) -> None:
        if self.tx is not None:
            tx, self.tx = self.tx, None
            await tx.commit()
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await self.pool.release(conn)

    async def close(self) -> None:
        """Ends the transaction and gives the connection back, whatever the steps met
        (a step that failed, e.g. chosen as a deadlock's victim, must not keep the
        connection: the pool would never close)."""
        try:
            if self.task is not None and not self.task.done():
                self.task.cancel()
            if self.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
        finally:
            if self.tx is not None and self.conn is not None and self.conn.is_in_transaction():
                tx, self.tx = self.tx, None
                with contextlib.suppress(asyncpg.PostgresError):
                    await tx.rollback()
            self.tx = None
            if self.conn is not None:
                conn, self.conn = self.conn, None
                await self.pool.release(conn)


class CaptureFault:
    """While installed, Postgres refuses every capture with `sqlstate` (a trigger
    on charges): an error of the database itself, neither an outage nor a lock."""

    def __init__(self, pool: asyncpg.Pool, sqlstate: str) -> None:
        self.pool = pool
        self.sqlstate = sqlstate

    async def install(self) -> None:
        await self.pool.execute(f"""
            CREATE OR REPLACE FUNCTION test_capture_fault() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.state = 'captured' THEN
                    RAISE EXCEPTION '{CAPTURE_FAULT}' USING ERRCODE = '{self.sqlstate}';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_capture_fault BEFORE UPDATE ON charges
                FOR EACH ROW EXECUTE FUNCTION test_capture_fault();
        """)

    async def clear(self) -> None:
        await self.pool.execute("DROP TRIGGER IF EXISTS test_capture_fault ON charges")


@contextlib.asynccontextmanager
async def capture_fault(pool: asyncpg.Pool, sqlstate: str) -> AsyncIterator[CaptureFault]:
    fault = CaptureFault(pool, sqlstate)
    await fault.install()
    try:
        yield fault
    finally:
        await fault.clear()
