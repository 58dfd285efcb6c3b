"""Reconcile benchmark: one `billing.reconcile.reconcile` run over N teams.

Every team has one ended billing month with unbilled additional tokens, so the
run makes one `month_end` bill per team and sends it, through the real
`StripeSender` and stripe-python, to the stateful Stripe fake of the tests
(`testing/stripe/`, on respx: no sockets), with zero latency or with a
fixed latency per request. Teams, months and captured charges are written with
bulk SQL (`generate_series`), consistent with each other, so `Ledger.drift()`
stays empty; the timed part is the reconcile run alone.

The fake behaves as Stripe does: finalizing does not pay. A run creates,
fills and finalizes each invoice (3 requests a bill); then Stripe's automatic
collection pays them (`run_automatic_collection`), and a second run learns it
by reading (a list request per 100 bills).

Each run is checked: one bill per team, every bill paid, exactly one paid
invoice per team at the fake and no other invoice, no drift.

The rate-limited run puts Stripe's default limit on the fake, 25
requests/s per endpoint, sends RATE_TEAMS bills through the production client
(paced at RATE_PACE_RPS per endpoint, 429s retried) and reports Stripe requests
per bill and bills/s as a share of what the limit allows (each bill needs one
request at each of the three write endpoints, so the limit allows 25 bills/s).

    python -m bench reconcile [--quick] [--rate-limited] [--scenario ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.reconcile_teams import RECONCILE_AT, UNBILLED, check, cleanup, setup
from bench.servers import fresh_servers, quiet_logs
from billing.reconcile import reconcile
from billing.sender import StripeSender
from billing.stripe_client import build_client
from db.pool import create_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger
from testing.stripe import DEFAULT_API_KEY, DEFAULT_BASE, StripeFake

DEFAULT_CONCURRENCY = 8  # billing.reconcile.reconcile's default
LATENCY_MS = 100.0
LATENCY_TEAMS = 1_000
LATENCY_CONCURRENCY = (DEFAULT_CONCURRENCY, 64)
# 10,000 teams take well over a minute on the 2-core machine: too long for --quick.
QUICK_TEAMS = 1_000
FULL_TEAMS = (1_000, 10_000)  # 100,000: about 15 min with the in-process fake
HEADLINE_TEAMS = 10_000
TARGET_SECONDS = 10.0  # 10,000 teams with a zero-latency Stripe
COMPARE_TEAMS = 1_000
# Stripe's default rate limit per endpoint, and how the production client is paced
# against it (TOKENS_STRIPE_MAX_RPS; its default, 20, leaves more room).
RATE_LIMIT = 25.0
RATE_PACE_RPS = 24.0
RATE_TEAMS = 300
RATE_LATENCY_MS = 30.0
RATE_CONCURRENCY = 16


@dataclass(frozen=True)
class Scenario:
    teams: int
    charges_per_team: int = 1
    latency_ms: float = 0.0
    concurrency: int = DEFAULT_CONCURRENCY
    rate_limit: float | None = None  # the fake's requests/s per endpoint
    pace_rps: float | None = None  # the production client's pacing (None: a plain client)


def _forget_calls(fake: StripeFake, done: int) -> None:
    """respx keeps every request and response it mocked; at 100,000 teams that is
    gigabytes the benchmark's own process would carry (and garbage-collect)."""
    if done % 1_000 == 0:
        fake.router.reset()


async def run_one(pool: asyncpg.Pool, ledger: Ledger, s: Scenario, tag: str) -> dict[str, Any]:
    """Set up, time one reconcile run, check it, clean up."""
    prefix = f"brc{tag}-"
    t0 = time.perf_counter()
    await setup(pool, prefix, s.teams, s.charges_per_team)
    setup_s = time.perf_counter() - t0
    fake = StripeFake(latency=s.latency_ms / 1000, rate_limit_per_endpoint=s.rate_limit)
    width = len(str(s.teams))
    for n in range(1, s.teams + 1):
        fake.add_customer(f"cus_{prefix}{n:0{width}d}")
    client = (
        fake.client()
        if s.pace_rps is None
        else build_client(DEFAULT_API_KEY, DEFAULT_BASE, max_rps=s.pace_rps, max_total_rps=None)
    )
    try:
        with fake:
            # Stripe's automatic collection pays; the reconciler would pay an invoice
            # itself only if it were still open an hour later.
            sender = StripeSender(pool, client, lambda: RECONCILE_AT, pay_after=timedelta(hours=1))
            t0, cpu0 = time.perf_counter(), time.process_time()
            report = await reconcile(
                pool,
                sender,
                team=None,
                at=RECONCILE_AT,
                concurrency=s.concurrency,
                progress=lambda done, _: _forget_calls(fake, done),
            )
            seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
            sent_requests = len(fake.requests)
            limited_set = {id(r) for r in fake.rate_limited}
            fake.run_automatic_collection()  # about an hour later, at Stripe
            t1 = time.perf_counter()
            collected = await reconcile(
                pool, sender, team=None, at=RECONCILE_AT, concurrency=s.concurrency
            )
            read_s = time.perf_counter() - t1
        checked = await check(pool, ledger, fake, prefix, s.teams)
    finally:
        await cleanup(pool, prefix)
    result: dict[str, Any] = {
        "teams": s.teams,
        "charges_per_team": s.charges_per_team,
        "latency_ms": s.latency_ms,
        "concurrency": s.concurrency,
        "seconds": round(seconds, 3),
        "per_team_ms": round(seconds * 1000 / s.teams, 4),
        # This process's CPU (reconciler, stripe-python, the in-process fake): on a
        # shared machine, steadier than wall time.
        "cpu_s": round(cpu_s, 3),
        "bills_created": len(report.created),
        "bills_sent": report.sent,
        "bills_failed": report.failed + collected.failed,
        "read_s": round(read_s, 3),
        "requests_per_bill": round(checked["stripe_requests"] / s.teams, 3),
        "send_requests_per_bill": round(sent_requests / s.teams, 3),
        "rate_limited_429": len(fake.rate_limited),
        "bills_per_s": round(s.teams / seconds, 2),
        **checked,
        "setup_s": round(setup_s, 2),
    }
    ok = (
        checked["teams_not_paid_once"] == checked["teams_not_billed_once"] == 0
        and checked["bills"] == checked["bills_paid"] == checked["invoices_paid"] == s.teams
        and checked["invoices"] == s.teams
        and checked["months_not_closed"] == checked["drift_rows"] == checked["fake_errors"] == 0
    )
    if s.rate_limit is not None:
        # What the limit allows: the busiest endpoint takes this many requests a bill
        # (429s left out: they are what the limit refused).
        ok_requests = Counter(
            (r.method, fake._step_of(r.method, r.path))
            for r in fake.requests[:sent_requests]
            if id(r) not in limited_set
        )
        busiest = max(ok_requests.values()) / s.teams
        allowed = s.rate_limit / busiest
        result["rate_limit_per_endpoint"] = s.rate_limit
        result["pace_rps"] = s.pace_rps
        result["allowed_bills_per_s"] = round(allowed, 2)
        result["rate_limit_share"] = round(s.teams / seconds / allowed, 3)
        ok = ok and result["bills_failed"] == 0
    result["ok"] = ok
    print(
        f"  reconcile {s.teams:>7,} teams x {s.charges_per_team:>3} charges  "
        f"latency {s.latency_ms:>5.0f} ms  c{s.concurrency:<3} {seconds:>8.2f} s  "
        f"{result['per_team_ms']:>7.3f} ms/team  cpu {cpu_s:>7.2f} s  "
        f"{checked['stripe_requests'] / s.teams:.1f} req/team  paid {checked['invoices_paid']:,}"
        f"{'' if ok else '  CHECK FAILED: ' + json.dumps(checked)}",
        flush=True,
    )
    return result


RATE_SCENARIO = Scenario(
    RATE_TEAMS,
    latency_ms=RATE_LATENCY_MS,
    concurrency=RATE_CONCURRENCY,
    rate_limit=RATE_LIMIT,
    pace_rps=RATE_PACE_RPS,
)


def _plan(quick: bool) -> tuple[list[Scenario], list[Scenario]]:
    """(runs, extra runs for the charge-count comparison)."""
    if quick:
        return [Scenario(QUICK_TEAMS)], [Scenario(COMPARE_TEAMS, charges_per_team=100)]
    runs = [Scenario(n) for n in FULL_TEAMS]
    runs += [
        Scenario(LATENCY_TEAMS, latency_ms=LATENCY_MS, concurrency=c) for c in LATENCY_CONCURRENCY
    ]
    compare = [Scenario(COMPARE_TEAMS, charges_per_team=k) for k in (100, 1, 1_000, 100)]
    return runs, compare


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _charges_independence(results: list[dict[str, Any]]) -> dict[str, Any]:
    """COMPARE_TEAMS teams at zero latency, grouped by charges per team (medians)."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        if (r["teams"], r["latency_ms"], r["concurrency"]) == (
            COMPARE_TEAMS,
            0,
            DEFAULT_CONCURRENCY,
        ):
            groups.setdefault(r["charges_per_team"], []).append(r)
    rows = [
        {
            "charges_per_team": k,
            "charges": k * COMPARE_TEAMS,
            "runs": len(rs),
            "seconds": _median([r["seconds"] for r in rs]),
            "cpu_s": _median([r["cpu_s"] for r in rs]),
        }
        for k, rs in sorted(groups.items())
    ]
    few, many = rows[0], rows[-1]
    return {
        "teams": COMPARE_TEAMS,
        "unbilled_tokens_per_team": UNBILLED,
        "by_charges": rows,
        "charges_per_team": [few["charges_per_team"], many["charges_per_team"]],
        "seconds": [few["seconds"], many["seconds"]],
        # ~1.0: the run's cost follows the teams billed, not the charges behind the bills
        "ratio": round(many["seconds"] / few["seconds"], 3),
        "cpu_ratio": round(many["cpu_s"] / few["cpu_s"], 3),
    }


async def run_scenarios(
    dsn: str, runs_plan: Sequence[Scenario], compare_plan: Sequence[Scenario] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    biggest = max(s.concurrency for s in [*runs_plan, *compare_plan])
    pool = await create_pool(dsn, min_size=2, max_size=biggest + 2)
    try:
        ledger = Ledger(pool, DEFAULT_CATALOG)
        await ledger.sync_catalog()
        runs = [await run_one(pool, ledger, s, f"r{i}") for i, s in enumerate(runs_plan)]
        compared = [await run_one(pool, ledger, s, f"c{i}") for i, s in enumerate(compare_plan)]
    finally:
        await pool.close()
    return runs, compared


async def run(dsn: str, *, quick: bool) -> dict[str, Any]:
    """Reconcile runs on the migrated database at `dsn`; see the module docstring."""
    runs, compared = await run_scenarios(dsn, *_plan(quick))
    [limited], _ = await run_scenarios(dsn, [RATE_SCENARIO])
    headline = next(
        (r for r in runs if r["teams"] == HEADLINE_TEAMS and r["latency_ms"] == 0), runs[0]
    )
    return {
        # Against Stripe's 25 requests/s per endpoint: goals <= 3 and >= 0.9.
        "requests_per_bill": limited["requests_per_bill"],
        "rate_limit_share": limited["rate_limit_share"],
        "rate_limited": limited,
        "teams": headline["teams"],
        "seconds": headline["seconds"],
        "per_team_ms": headline["per_team_ms"],
        "cpu_s": headline["cpu_s"],
        "target": {"teams": HEADLINE_TEAMS, "seconds": TARGET_SECONDS},
        "ok": all(r["ok"] for r in [*runs, *compared, limited]),
        "runs": runs,
        "charges_independence": {
            **_charges_independence(runs + compared),
            "runs": compared,
        },
    }


async def _standalone(quick: bool, scenarios: list[Scenario]) -> Any:
    async with fresh_servers() as servers:
        if scenarios:
            return (await run_scenarios(servers.dsn, scenarios))[0]
        return await run(servers.dsn, quick=quick)


def _scenario(text: str) -> Scenario:
    parts = [*text.split(","), "", "", ""][:4]
    return Scenario(
        int(parts[0]),
        int(parts[1] or 1),
        float(parts[2] or 0),
        int(parts[3] or DEFAULT_CONCURRENCY),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench reconcile", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TEAMS:,} teams only")
    parser.add_argument(
        "--rate-limited",
        action="store_true",
        help=f"only the run against a {RATE_LIMIT:g}/s per-endpoint limit ({RATE_TEAMS} bills)",
    )
    parser.add_argument("--json", type=Path, help="write the results as one JSON object here")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="TEAMS[,CHARGES[,LATENCY_MS[,CONCURRENCY]]]",
        help="run only these (repeatable), e.g. 1000,1,100,8",
    )
    args = parser.parse_args(argv)
    scenarios = [_scenario(text) for text in args.scenario]
    if args.rate_limited:
        scenarios.append(RATE_SCENARIO)
    quiet_logs()
    result = asyncio.run(_standalone(args.quick, scenarios))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = all(r["ok"] for r in result) if scenarios else result["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
