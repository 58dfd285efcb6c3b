"""Benchmarks of Tokens: `python -m bench` runs them all and writes docs/benchmarks.md.

    python -m bench [--quick] [--rounds N] [--docs FILE | --no-docs] [--json FILE]
    python -m bench --from-json docs/benchmarks.json   the docs of an earlier run, again
    python -m bench COMMAND [--help]      one benchmark alone, on its own servers

Commands, each also part of the whole run:
  hold-capture   hold+capture/s: group commit, one commit per call, a raw UPDATE;
                 at c32 beside pgbench, and what bounds it
  arq            the worker's metering overhead: metered against no-op jobs
  capacity       metered jobs/s per worker process, by provider latency and processes
  reconcile      one reconcile run over many teams against the Stripe fake
  api            `tokens serve`: bulk enqueue, GET billing against bare Ledger.billing
  cli-start      a whole `tokens billing --json` process against `python -c pass`
Commands not in the whole run:
  soak           many leads while Postgres, Valkey and a worker die (minutes)
  sql-ab         a commit's money-path SQL functions against the tree's, call by call

Every benchmark starts an embedded Postgres and Valkey in a fresh temporary
data dir. The whole run writes docs/benchmarks.md, the JSON of the run beside
it (docs/benchmarks.json) and, with two concurrencies or more and matplotlib
installed (a dev dependency), the plot (docs/benchmarks.png). --quick: c32
only, fewer rounds of shorter points, smaller data; the same method.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import api, arq_overhead, capacity, cli_start, hold_capture, reconcile, report
from bench.servers import fresh_servers, quiet_logs, wake_cost_us

COMMANDS = {
    "hold-capture": "bench.hold_capture",
    "arq": "bench.arq_overhead",
    "capacity": "bench.capacity",
    "reconcile": "bench.reconcile",
    "api": "bench.api",
    "cli-start": "bench.cli_start",
    "soak": "bench.soak",
    "sql-ab": "bench.sql_ab",
}
ROOT = Path(__file__).resolve().parent.parent


def _commit() -> str:
    """The commit measured, `-dirty` when the tree has changes to tracked files."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


async def _run(quick: bool, rounds: int | None) -> dict[str, Any]:
    wake_us = wake_cost_us()  # before any server runs
    async with fresh_servers() as servers:
        dsn, redis_url = servers.dsn, servers.redis_url()
        conn = await asyncpg.connect(dsn)
        try:
            postgres = await conn.fetchval("SELECT version()")
        finally:
            await conn.close()
        print("hold+capture:", flush=True)
        hc = await hold_capture.run(dsn, quick=quick, rounds=rounds)
        print("the worker's metering overhead:", flush=True)
        arq = await arq_overhead.run(dsn, redis_url, quick=quick)
        print("capacity, metered jobs/s per worker process:", flush=True)
        cap = await capacity.run(dsn, redis_url, quick=quick)
        print("reconcile:", flush=True)
        reconciled = await reconcile.run(dsn, quick=quick)
        print("HTTP API and the billing read:", flush=True)
        http = await api.run(dsn, redis_url, quick=quick)
        billing = await api.billing_read(dsn, quick=quick)
    print("command start-up:", flush=True)
    cli = await asyncio.to_thread(cli_start.run, quick=quick)
    return {
        "quick": quick,
        "commit": _commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgres": postgres,
            "wake_cost_us": wake_us,
        },
        "hold_capture": hc,
        "arq_overhead": arq,
        "capacity": cap,
        "reconcile": reconciled,
        "api": http,
        "billing_read": billing,
        "cli": cli,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        command: int = importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
        return command
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="c32 only, fewer and shorter rounds")
    parser.add_argument("--rounds", type=int, help="hold+capture rounds per point (5 quick, 7)")
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-docs", action="store_true", help="write no docs")
    parser.add_argument("--json", type=Path, help="also write the run's JSON here")
    parser.add_argument(
        "--from-json", type=Path, help="no run: write the docs of an earlier run's JSON"
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.from_json:
        report.write_docs(json.loads(args.from_json.read_text()), args.docs)
        print(f"wrote {args.docs}")
        return 0
    quiet_logs()
    result = asyncio.run(_run(args.quick, args.rounds))
    # The JSON first: a report that fails to render must not lose the run.
    text = json.dumps(result, indent=2, default=str) + "\n"
    if args.json:
        args.json.write_text(text)
    if not args.no_docs:
        args.docs.with_suffix(".json").write_text(text)
    print()
    print(report.summary(result))
    if not args.no_docs:
        report.write_docs(result, args.docs)
        print(f"wrote {args.docs} and {args.docs.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
