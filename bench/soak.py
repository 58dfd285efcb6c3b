"""Soak: many leads over several workers while every server restarts and a worker dies.

    uv run python -m bench soak [--leads 10000] [--workers 3] [--latency-ms 100]
                               [--json bench/out/soak.json]

Not part of CI. On fresh embedded servers (a temporary data dir), it queues
`--leads` enrich jobs over 4 teams (all of them fit their tokens), starts
`--workers` real `tokens worker` processes with sandbox providers of
`--latency-ms`, and, as the captures pass 20 %, 45 % and 70 % of the leads:

1. crashes Postgres (`pg_ctl stop -m immediate`), keeps it down for
   `--pg-down-s` seconds, starts it again (crash recovery);
2. SIGKILLs Valkey and starts it again at once (same port, append-only file);
3. SIGKILLs one worker and starts a replacement (as a supervisor would).

It then waits until every job has a result and reports: how long the run
took, how long the captures stalled after each event, how many jobs went
back to the queue because of an outage (and how many times), how many were
captured from an earlier run's search instead of searching again, and the
check that nothing was lost or doubled: one captured charge per lead,
nothing held, no failed job, running totals equal to the charges.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import result_key_prefix
from arq.jobs import deserialize_result

from bench.servers import fresh_servers, quiet_logs
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from runtime.embedded import ensure_postgres, ensure_redis, stop_postgres, stop_redis
from runtime.transient import is_transient
from worker.client import enqueue
from worker.queue import OUTAGE_KEY_PREFIX, QUEUE

ROOT = Path(__file__).resolve().parent.parent
TEAMS = ("soak-a", "soak-b", "soak-c", "soak-d")
SAMPLE_S = 0.25


@dataclass
class Event:
    name: str
    at_s: float  # since the run started
    captured_before: int
    stall_s: float | None = None  # until the captured count grew again


@dataclass
class Run:
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, int]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started


async def _captured(dsn: str) -> int | None:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except Exception as exc:
        if is_transient(exc):
            return None
        raise
    try:
        return int(await conn.fetchval("SELECT count(*) FROM charges WHERE state = 'captured'"))
    except Exception as exc:
        if is_transient(exc):
            return None
        raise
    finally:
        await conn.close()


async def _setup(dsn: str, redis: ArqRedis, leads: int) -> list[str]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    try:
        ledger = Ledger(pool, DEFAULT_CATALOG)
        await ledger.sync_catalog()
        anchor = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        for team in TEAMS:
            await ledger.set_team(
                team, plan="sales_engagement", seats=1, interval="month", anchor=anchor, at=anchor
            )
            await ledger.set_limit(team, 10 * leads, actor="soak", role="admin", at=anchor)
    finally:
        await pool.close()
    job_ids: list[str] = []
    per_team = -(-leads // len(TEAMS))
    for n, team in enumerate(TEAMS):
        first = n * per_team
        count = min(per_team, leads - first)
        if count <= 0:
            break
        payload = {
            "leads": [
                {"id": f"l{i}", "email": f"p{i}@{team}.io"} for i in range(first, first + count)
            ]
        }
        jobs = await enqueue(redis, DEFAULT_CATALOG, team, "enrich", payload=payload, job_id=team)
        job_ids += [j.job_id for j in jobs]
    await redis.execute_command("WAITAOF", 1, 0, 5000)  # type: ignore[no-untyped-call]  # queued means on disk
    return job_ids


def _start_worker(env: dict[str, str], log_dir: Path, n: int) -> subprocess.Popen[bytes]:
    log = (log_dir / f"worker-{n}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


async def _sampler(run: Run, dsn: str, total: int, done: asyncio.Event) -> None:
    last = 0
    while not done.is_set():
        value = await _captured(dsn)
        if value is not None:
            last = value
        run.samples.append((run.now(), last))
        for event in run.events:
            if event.stall_s is None and value is not None and value > event.captured_before:
                event.stall_s = round(run.now() - event.at_s, 2)
        if last >= total:
            return
        await asyncio.sleep(SAMPLE_S)  # sampling period of the progress timeline


async def _wait_captured(run: Run, at_least: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not run.samples or run.samples[-1][1] < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {at_least} captures after {timeout_s:.0f} s")
        await asyncio.sleep(SAMPLE_S)  # waits for the sampler's next reading


def _fresh_log_dir(log_dir: Path) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("worker-*.log"):
        old.unlink()
    return log_dir


async def _queue_drained(redis: ArqRedis, timeout_s: float) -> None:
    """Every lead is captured; wait until the workers have written the last results."""
    deadline = time.monotonic() + timeout_s
    while await redis.zcard(QUEUE):
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still queued after {timeout_s:.0f} s")
        await asyncio.sleep(SAMPLE_S)  # polling the queue, bounded by the deadline


def _event(run: Run, name: str) -> Event:
    event = Event(name, round(run.now(), 2), run.samples[-1][1] if run.samples else 0)
    run.events.append(event)
    print(f"[{event.at_s:7.2f}s] {name} (captured so far: {event.captured_before})", flush=True)
    return event


def _longest_stall(samples: list[tuple[float, int]]) -> float:
    """The longest time the captured count did not move, before the end."""
    longest, since, last = 0.0, 0.0, -1
    for t, value in samples:
        if value != last:
            longest, since, last = max(longest, t - since), t, value
    return round(longest, 2)


async def _results(redis: ArqRedis, job_ids: list[str]) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    reused = 0
    failures: list[str] = []
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        raws = await redis.mget([result_key_prefix + j for j in chunk])
        for job_id, raw in zip(chunk, raws, strict=True):
            if raw is None:
                statuses["no_result"] += 1
                continue
            info = deserialize_result(raw)
            if not info.success:
                statuses["failed"] += 1
                failures.append(f"{job_id}: {info.result!r}"[:200])
                continue
            statuses[info.result["status"]] += 1
            reused += bool(info.result.get("search_reused"))
    return {"statuses": dict(statuses), "search_reused": reused, "failures": failures[:10]}


async def _outage_retries(redis: ArqRedis) -> dict[str, int]:
    jobs, total = 0, 0
    async for key in redis.scan_iter(match=OUTAGE_KEY_PREFIX + "*", count=1000):
        jobs += 1
        total += int(await redis.get(key) or 0)
    return {"jobs_requeued": jobs, "requeues": total}


def _log_counts(log_dir: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for path in log_dir.glob("worker-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            event = record.get("event") if isinstance(record, dict) else None
            if event in ("outage_wait", "outage_retry", "outage_deferred", "outage_try_counted"):
                counts[event] += 1
    return dict(counts)


async def _ledger_check(dsn: str, expected: int) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        states = {
            r["state"]: r["n"]
            for r in await pool.fetch("SELECT state, count(*) AS n FROM charges GROUP BY state")
        }
        per_lead = await pool.fetchval(
            "SELECT count(*) FROM (SELECT team_id, lead_id FROM charges "
            "WHERE state = 'captured' GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
        drift = await Ledger(pool, DEFAULT_CATALOG).drift()
    finally:
        await pool.close()
    return {
        "charges_by_state": states,
        "leads_charged_twice": int(per_lead),
        "leads_not_captured": expected - int(states.get("captured", 0)),
        "held_left": int(states.get("held", 0)),
        "drift": drift,
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    quiet_logs()
    async with fresh_servers(prefix="tokens-soak-") as servers:
        redis_url = servers.redis_url()
        redis = await create_pool(RedisSettings.from_dsn(redis_url))
        await redis.flushdb()
        job_ids = await _setup(servers.dsn, redis, args.leads)
        total = len(job_ids)
        log_dir = _fresh_log_dir(Path(args.log_dir))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENS_", "STRIPE_"))}
        env |= {
            "TOKENS_DATABASE_URL": servers.dsn,
            "TOKENS_REDIS_URL": redis_url,
            "TOKENS_SANDBOX_LATENCY_MS": str(args.latency_ms),
            "TOKENS_WORKER_CONCURRENCY": str(args.concurrency),
            "TOKENS_JOB_TIMEOUT_SECONDS": str(args.job_timeout_s),
            # A provider call must fit in half a job (runtime/config.py).
            "TOKENS_PROVIDER_TIMEOUT_SECONDS": str(args.job_timeout_s / 2),
            "TOKENS_OUTAGE_WAIT_SECONDS": str(args.outage_wait_s),
            "TOKENS_RECONCILE_INTERVAL_SECONDS": "3600",
            "TOKENS_LOG_FORMAT": "json",
            "TOKENS_LOG_LEVEL": "WARNING",
        }
        print(f"soak: {total} leads, {args.workers} workers, data dir {servers.data_dir}")
        run = Run()
        workers = [_start_worker(env, log_dir, n) for n in range(args.workers)]
        done = asyncio.Event()
        sampler = asyncio.create_task(_sampler(run, servers.dsn, total, done))
        try:
            await _wait_captured(run, int(total * 0.2), args.timeout_s)
            _event(run, "postgres crashed (pg_ctl stop -m immediate)")
            await asyncio.to_thread(stop_postgres, servers.data_dir, mode="immediate")
            await asyncio.sleep(args.pg_down_s)  # the outage itself: Postgres stays down
            await asyncio.to_thread(ensure_postgres, servers.data_dir)
            _event(run, "postgres started again")

            await _wait_captured(run, int(total * 0.45), args.timeout_s)
            _event(run, "valkey SIGKILLed and started again")
            await asyncio.to_thread(stop_redis, servers.data_dir, kill=True)
            url = await asyncio.to_thread(ensure_redis, servers.data_dir)
            assert url == redis_url, (url, redis_url)

            await _wait_captured(run, int(total * 0.7), args.timeout_s)
            _event(run, "worker 0 SIGKILLed, a replacement started")
            workers[0].send_signal(signal.SIGKILL)
            await asyncio.to_thread(workers[0].wait, 10)
            workers.append(_start_worker(env, log_dir, len(workers)))

            await asyncio.wait_for(sampler, args.timeout_s)
            await _queue_drained(redis, args.timeout_s)
        finally:
            done.set()
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    await asyncio.to_thread(w.wait, 60)
                except subprocess.TimeoutExpired:
                    w.kill()
        elapsed = run.now()
        results = await _results(redis, job_ids)
        outage = await _outage_retries(redis)
        await redis.aclose()
        ledger = await _ledger_check(servers.dsn, total)
    report = {
        "leads": total,
        "workers": args.workers,
        "concurrency_per_worker": args.concurrency,
        "latency_ms": args.latency_ms,
        "pg_down_s": args.pg_down_s,
        "outage_wait_s": args.outage_wait_s,
        "job_timeout_s": args.job_timeout_s,
        "seconds": round(elapsed, 1),
        "leads_per_s": round(total / elapsed, 1),
        "events": [e.__dict__ for e in run.events],
        "longest_stall_s": _longest_stall(run.samples),
        "outage": outage,
        "worker_log_events": _log_counts(log_dir),
        "results": results,
        "ledger": ledger,
    }
    report["ok"] = (
        results["statuses"].get("failed", 0) == 0
        and results["statuses"].get("no_result", 0) == 0
        and ledger["leads_charged_twice"] == 0
        and ledger["leads_not_captured"] == 0
        and ledger["held_left"] == 0
        and not ledger["drift"]
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--pg-down-s", type=float, default=5.0)
    parser.add_argument("--outage-wait-s", type=float, default=2.0)
    parser.add_argument("--job-timeout-s", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--log-dir", default="bench/out/soak-logs")
    parser.add_argument("--json", default="bench/out/soak.json")
    args = parser.parse_args(argv)
    report = asyncio.run(soak(args))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    if not report["ok"]:
        raise SystemExit("soak: something was lost, doubled or left held (see the report)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
