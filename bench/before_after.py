"""hold+capture of an older commit against the working tree, in the same run.

    python -m bench.before_after [--base REV] [--rounds N] [--duration S]
                                 [--concurrency 1,8,32,64] [--json FILE]

A change to the money path must not cost throughput, and on a shared,
noisy machine two runs minutes apart are not comparable. So both
implementations run here on one embedded Postgres, each in its own
database migrated by its own code (`REV`'s `ledger/sql/functions.sql`
against the tree's), and each measurement is a fresh process that imports
that implementation's `ledger` package (bench/before_after_point.py; REV is
extracted with `git archive` into a temporary directory). Points alternate
before/after, in the other order every round, and the result per point is
the median over rounds of the ratio after/before of two neighbouring runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench import report
from bench.servers import fresh_servers

ROOT = Path(__file__).resolve().parent.parent
POINT = Path(__file__).resolve().with_name("before_after_point.py")
SCENARIOS = {"hot": "hot_team", "many": "many_teams"}


def extract(rev: str, into: Path) -> Path:
    """The tree of `rev` (its Python packages), as files under `into`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev], cwd=ROOT, check=True, capture_output=True
    ).stdout
    tar = into / "tree.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into / "tree", filter="data")
    tar.unlink()
    return into / "tree"


def point(tree: Path, *args: str) -> dict[str, Any]:
    """One bench/before_after_point.py process importing `tree`'s packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENS_")}
    env["PYTHONPATH"] = str(tree)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, str(POINT), *args]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{POINT.name} {' '.join(args)} failed:\n{done.stderr}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


async def create_database(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def measure(
    base: str, rounds: int, duration_s: float, concurrencies: list[int], teams: int
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tokens-before-after-", dir="/tmp"))
    try:
        before_tree = extract(base, tmp)
        async with fresh_servers() as servers:
            trees = {
                "before": (before_tree, await create_database(servers.dsn, "tokens_before")),
                "after": (ROOT, await create_database(servers.dsn, "tokens_after")),
            }
            for name, (tree, dsn) in trees.items():
                print(
                    f"  set-up {name}: {point(tree, 'setup', '--dsn', dsn, '--teams', str(teams))}"
                )
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
            n = 0
            for r in range(rounds):
                for scenario in SCENARIOS:
                    for c in concurrencies:
                        key = f"{SCENARIOS[scenario]}/c{c}"
                        order = ["before", "after"] if n % 2 == 0 else ["after", "before"]
                        n += 1
                        for name in order:
                            tree, dsn = trees[name]
                            result = point(
                                tree, "run", "--dsn", dsn, "--scenario", scenario,
                                "--concurrency", str(c), "--duration", str(duration_s),
                                "--tag", f"r{r}", "--teams", str(teams),
                            )  # fmt: skip
                            runs.setdefault(key, {}).setdefault(name, []).append(result)
                        got = runs[key]
                        print(
                            f"  round {r + 1} {key:<16} before {got['before'][-1]['per_s']:>8.1f}/s"
                            f"  after {got['after'][-1]['per_s']:>8.1f}/s",
                            flush=True,
                        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"base": base, "rounds": rounds, "duration_s": duration_s, "points": summarize(runs)}


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, by in runs.items():
        ratios = [a["per_s"] / b["per_s"] for b, a in zip(by["before"], by["after"], strict=True)]
        out[key] = {
            "before_per_s": round(statistics.median(x["per_s"] for x in by["before"]), 1),
            "after_per_s": round(statistics.median(x["per_s"] for x in by["after"]), 1),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "before_p99_ms": round(statistics.median(x["p99_ms"] for x in by["before"]), 2),
            "after_p99_ms": round(statistics.median(x["p99_ms"] for x in by["after"]), 2),
            "after_items_per_commit": round(
                statistics.median(x["items_per_commit"] for x in by["after"]), 1
            ),
            **{
                f"{name}_{kind}_cpu_ms_per_op": round(
                    statistics.median(x[f"{kind}_cpu_ms_per_op"] for x in by[name]), 3
                )
                for name in ("before", "after")
                for kind in ("client", "server")
            },
        }
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| scenario | concurrency | before/s (median) | after/s (median) "
        "| after/before (median of rounds) | min .. max | p99 ms before | p99 ms after "
        "| Postgres CPU ms/op before | after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, p in result["points"].items():
        scenario, c = key.split("/")
        lines.append(
            f"| {scenario} | {c.removeprefix('c')} | {p['before_per_s']:,.0f} "
            f"| {p['after_per_s']:,.0f} | **{p['ratio_median']:.2f}** "
            f"| {p['ratio_min']:.2f} .. {p['ratio_max']:.2f} "
            f"| {p['before_p99_ms']:.2f} | {p['after_p99_ms']:.2f} "
            f"| {p['before_server_cpu_ms_per_op']:.3f} | {p['after_server_cpu_ms_per_op']:.3f} |"
        )
    return "\n".join(lines)


HEADING = "## One implementation per ledger operation: before and after"


def section(result: dict[str, Any]) -> str:
    """The docs/benchmarks.md section of a run."""
    return f"""Produced by `uv run python -m bench.before_after --docs docs/benchmarks.md`
(commit `{result["base"]}`, before issue 12, against the tree), {result["rounds"]} rounds of
{result["duration_s"]} s per point. Before: the hold and settle rules written twice
(`tokens_hold` / `tokens_settle` for a lone call, `tokens_apply` for a batch).
After: `tokens_apply` only, a lone call being a batch of one. Both run on one
embedded Postgres, each in its own database migrated by its own code, each
measurement a fresh process importing that commit's `ledger`
(`bench/before_after_point.py`); points alternate before/after, in the other
order every round. One operation is one `Ledger.hold` then one
`Ledger.capture`, C callers on a pool of C connections, group commit on;
`hot_team` puts every operation on one team, `many_teams` spreads them over
1,000. after/before is the median over rounds of the ratio of two neighbouring
runs; rates are medians; Postgres CPU is the pool's backends' CPU time per
operation (commits included).

{table(result)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.before_after", description=__doc__)
    # c3da0ec is main just before issue 12 merged (c42ef1e's first parent): the same
    # features (usage alerts' trigger, the month's limit), the rules still written twice.
    # An older base would charge issue 12 with the cost of what landed in between.
    parser.add_argument("--base", default="c3da0ec", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--teams", type=int, default=1_000)
    parser.add_argument("--json", type=Path, help="write the result as JSON here")
    parser.add_argument("--docs", type=Path, help="write its section in this markdown file")
    parser.add_argument("--from-json", type=Path, help="no run: the result of an earlier --json")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        result = asyncio.run(
            measure(args.base, args.rounds, args.duration, concurrencies, args.teams)
        )
    print()
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.docs:
        report.replace_section(args.docs, HEADING, section(result))
        print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
