"""What every benchmark starts from: fresh embedded servers, quiet logs, CPU clocks,
and the one way a figure that varies is reported (`spread`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from db.migrate import migrate
from runtime.embedded import ensure_postgres, ensure_redis, stop_servers


@dataclass(frozen=True)
class Servers:
    data_dir: Path
    dsn: str

    def redis_url(self) -> str:
        """The embedded Valkey of this data dir, started on first ask."""
        return ensure_redis(self.data_dir)


@asynccontextmanager
async def fresh_servers(prefix: str = "tokens-bench-") -> AsyncIterator[Servers]:
    """A migrated embedded Postgres in a new temporary data dir, removed afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        dsn = ensure_postgres(data_dir)
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield Servers(data_dir, dsn)
    finally:
        stop_servers(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def quiet_logs() -> None:
    """The ledger logs every hold; a benchmark must not pay for printing them."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    logging.getLogger("arq").setLevel(logging.WARNING)


def postgres_cpu_s(postmaster: int) -> float:
    """CPU seconds of a Postgres server so far: the postmaster with the children it
    has reaped (backends that exited), and its live children."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster:
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy so far, on every core and for every
    process (ours, Postgres and any other work): /proc/stat less idle and I/O wait.
    Beside the CPU a load took itself, it says whether the cores were full."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    busy = sum(int(f) for f in fields[:8]) - int(fields[3]) - int(fields[4])
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's child processes that have exited and been waited
    for: a client run as a program (pgbench) measured like this process is."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def user_cpu_s() -> float:
    """This process's user-mode CPU seconds so far (`time.process_time` adds the
    kernel's, which on a VM is mostly the price of sleeping and being woken)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def sleeps_so_far() -> int:
    """This process's voluntary context switches so far: how often it went to sleep
    (waiting on a socket, a timer or a lock) and was woken again."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def wake_cost_us(sleeps: int = 100, rounds: int = 5) -> float:
    """CPU (us) this process is charged per `time.sleep(0.003)`: the price of going
    idle and being woken, median over `rounds`. It is part of every round trip a
    worker or client waits for, and it varies between machines (a VM pays the
    hypervisor for every wake) far more than the Python code does, so the report
    prints it beside the figures it inflates."""
    per_sleep = []
    for _ in range(rounds):
        cpu0 = time.process_time()
        for _ in range(sleeps):
            time.sleep(0.003)
        per_sleep.append((time.process_time() - cpu0) / sleeps * 1e6)
    return round(statistics.median(per_sleep), 1)


def spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """A figure measured once per round: its median, with the min and max that say how
    far one round can be trusted on a shared machine, and the number of rounds."""
    if not values:
        raise ValueError("spread of no rounds")
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "rounds": len(values),
    }


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def postmaster_of(pool: asyncpg.Pool) -> int:
    return _parent(int(await pool.fetchval("SELECT pg_backend_pid()")))


Run = Callable[..., Awaitable[dict[str, Any]]]


def standalone_main(
    argv: list[str] | None, *, prog: str, doc: str | None, quick_help: str, run: Run
) -> int:
    """`python -m bench.X [--quick] [--json FILE]` for a benchmark whose
    `run(dsn, redis_url, quick=...)` measures on servers it is given: here fresh
    ones; prints the result but its list of runs, writes it whole to FILE."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=Path, help="write the result as one JSON object here")
    args = parser.parse_args(argv)
    quiet_logs()

    async def standalone() -> dict[str, Any]:
        async with fresh_servers(f"tokens-{prog.rsplit('.', 1)[-1]}-") as servers:
            return await run(servers.dsn, servers.redis_url(), quick=args.quick)

    result = asyncio.run(standalone())
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0
