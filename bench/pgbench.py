"""The machine's own limit, measured beside hold+capture: pgbench on the same server.

The embedded Postgres's own pgbench (next to its `postgres`), through the
server's Unix socket, as many clients as the point has callers, prepared
statements as asyncpg uses them:

- `tpcb`: pgbench's built-in TPC-B-like transaction (three updates, a select
  and an insert in one commit) over `SCALE` branches;
- `update_1`: one autocommit `UPDATE bench_counter SET n = n + 1 WHERE id = 1`,
  the hot-row limit: every commit waits for the one row and its WAL flush;
- `update_1000`: the same on one of 1,000 rows at random, the limit a load
  spread over 1,000 teams meets.

pgbench is a C client: its transactions/s are what Postgres, the disk and the
cores give a client that costs almost nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.servers import children_cpu_s, machine_busy_s, postgres_cpu_s
from runtime.embedded.postgres import postgres_bin

COUNTER_ROWS = 1_000
SCALE = 10
SCRIPTS = {
    "update_1": "UPDATE bench_counter SET n = n + 1 WHERE id = 1;\n",
    "update_1000": (
        f"\\set id random(1, {COUNTER_ROWS})\nUPDATE bench_counter SET n = n + 1 WHERE id = :id;\n"
    ),
}
LOADS = ("tpcb", *SCRIPTS)
# pgbench names its connections so; a run is over when its backends are gone.
APPLICATION_NAME = "pgbench"
GONE_TIMEOUT_S = 10.0


class PgbenchError(RuntimeError):
    pass


def _pgbench() -> str:
    return str(postgres_bin("pgbench"))


async def _pgbench_run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        _pgbench(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        lines = (err or out).decode(errors="replace").strip().splitlines() or ["no output"]
        first = next((line for line in lines if "error:" in line), lines[-1])
        raise PgbenchError(f"pgbench {' '.join(args[:-1])} exited {proc.returncode}: {first}")
    return out.decode()


async def setup(dsn: str, scale: int = SCALE) -> None:
    """The counter's 1,000 rows and pgbench's TPC-B tables at `scale`."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_counter (id int PRIMARY KEY, n bigint NOT NULL)"
        )
        await conn.execute(
            "INSERT INTO bench_counter SELECT g, 0 FROM generate_series(1, $1::int) g "
            "ON CONFLICT (id) DO UPDATE SET n = 0",
            COUNTER_ROWS,
        )
    finally:
        await conn.close()
    # Server-side generation (G): one INSERT ... SELECT instead of a COPY from here.
    await _pgbench_run("-i", "-q", "-I", "dtGvp", "-s", str(scale), dsn)


def parse(output: str) -> tuple[float, int]:
    """(transactions/s, transactions) from pgbench's report; failed ones are an error."""
    tps = re.search(r"^tps = ([0-9.]+)", output, re.MULTILINE)
    done = re.search(r"^number of transactions actually processed: (\d+)", output, re.MULTILINE)
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.MULTILINE)
    if tps is None or done is None:
        raise PgbenchError(f"no tps in pgbench's report: {output.strip()[-300:]!r}")
    if failed is not None and int(failed.group(1)) > 0:
        raise PgbenchError(f"pgbench reported {failed.group(1)} failed transactions")
    return float(tps.group(1)), int(done.group(1))


class Pgbench:
    """pgbench's loads at one concurrency, `seconds` each (whole seconds: pgbench's -T)."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, clients: int, seconds: float) -> None:
        self.dsn, self.pool, self.clients = dsn, pool, clients
        self.seconds = max(1, round(seconds))
        self._dir = Path(tempfile.mkdtemp(prefix="tokens-pgbench-"))
        for name, text in SCRIPTS.items():
            (self._dir / f"{name}.sql").write_text(text)

    def close(self) -> None:
        for f in self._dir.iterdir():
            f.unlink()
        self._dir.rmdir()

    async def _backends_gone(self) -> None:
        # A backend counts its CPU (and statistics) as it exits, after pgbench has
        # returned: the round ends when the last one is gone.
        deadline = time.monotonic() + GONE_TIMEOUT_S
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        while await self.pool.fetchval(query, APPLICATION_NAME):
            if time.monotonic() > deadline:
                raise PgbenchError(f"pgbench's backends still there after {GONE_TIMEOUT_S} s")
            await asyncio.sleep(0.005)

    async def run(self, load: str, postmaster: int) -> dict[str, Any]:
        """One run of `load`: its transactions/s and transactions, and the CPU seconds
        of pgbench, of the Postgres server and of the whole machine over it."""
        script = ["-b", "tpcb-like"] if load == "tpcb" else ["-f", str(self._dir / f"{load}.sql")]
        threads = max(1, min(self.clients, os.cpu_count() or 1))
        args = ["-n", "-M", "prepared", "-c", str(self.clients), "-j", str(threads)]
        cpu0, pg0, busy0 = children_cpu_s(), postgres_cpu_s(postmaster), machine_busy_s()
        start = time.perf_counter()
        out = await _pgbench_run(*args, "-T", str(self.seconds), *script, self.dsn)
        await self._backends_gone()
        elapsed = time.perf_counter() - start
        per_s, transactions = parse(out)
        return {
            "per_s": per_s,
            "transactions": transactions,
            "elapsed": elapsed,
            "cpu_s": children_cpu_s() - cpu0,
            "pg_s": postgres_cpu_s(postmaster) - pg0,
            "busy_s": machine_busy_s() - busy0,
        }
