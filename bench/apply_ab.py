"""Two versions of `tokens_apply` against each other, in one Postgres, call by call.

    python -m bench.apply_ab [--base REV] [--batch 32] [--teams 1] [--rounds 10]
                             [--without-foreign-key] [--json FILE]

A change to the money function that saves 5 % of Postgres's CPU does not show
through the whole hold+capture path on a busy 2-core machine
(`bench.before_after` moves by ±10 % between rounds). This measures the
function alone: `REV`'s `tokens_apply` (from `ledger/sql/holds.sql`, default
HEAD) and the working tree's are installed side by side in one fresh embedded
Postgres, as `tokens_apply_base` and `tokens_apply_tree`, over the tree's
schema. One connection sends cycles of `--batch` holds, then their captures,
straight to each (no group commit, no Ledger), in alternated rounds (A B, then
B A). Per cycle: the wall time at the client and the Postgres server's CPU.
The result is the medians over rounds, and their ratio tree/base.

Both versions must answer alike: the first cycle of each is compared field
by field (but ids, keys, times and the room left, which differ by cycle).
Only `tokens_apply` differs: the functions it calls are the tree's.

`--without-foreign-key`: the same function on both sides, with the foreign
key from charges to billing_months dropped for the tree's rounds and put back
(NOT VALID) for the base's: what that key costs the money path.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.__main__ import AT, _setup_team
from bench.servers import fresh_servers, postgres_cpu_s, postmaster_of, quiet_logs
from db.pool import Conn, create_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger

ROOT = Path(__file__).resolve().parent.parent
HOLDS = "ledger/sql/holds.sql"
CYCLES_PER_ROUND = 60
WARMUP_CYCLES = 20
# Fields that differ from one cycle to the next whatever the function.
VARYING = {
    "charge_id",
    "idempotency_key",
    "held_at",
    "settled_at",
    "free_tokens",
    "additional_tokens",
    "free_available",
    "additional_available",
    "unbilled_additional",
}

_FUNCTION = re.compile(r"CREATE FUNCTION tokens_apply\(.*?\n\$\$;", re.S)


def apply_function(holds_sql: str, name: str) -> str:
    """`tokens_apply`'s CREATE statement from a holds.sql, renamed `name`."""
    found = _FUNCTION.search(holds_sql)
    if found is None:
        raise ValueError("no CREATE FUNCTION tokens_apply(...) $$; in this holds.sql")
    return found.group(0).replace(
        "CREATE FUNCTION tokens_apply(", f"CREATE OR REPLACE FUNCTION {name}(", 1
    )


def holds_sql_at(rev: str) -> str:
    done = subprocess.run(
        ["git", "show", f"{rev}:{HOLDS}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"cannot read {HOLDS} at {rev}: {done.stderr.strip()}")
    return done.stdout


def comparable(rows: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in dict(r).items() if k not in VARYING} for r in rows]


class Cycles:
    """Cycles of holds then their captures, through one function, on one connection."""

    def __init__(self, conn: Conn, teams: list[str], batch: int) -> None:
        self.conn = conn
        self.teams = teams
        self.batch = batch
        self.keys = itertools.count()

    async def run(self, function: str) -> tuple[list[Any], list[Any]]:
        n = self.batch
        teams = [self.teams[i % len(self.teams)] for i in range(n)]
        keys = [f"ab-{next(self.keys)}" for _ in range(n)]
        held = await self.conn.fetch(
            f"SELECT * FROM {function}('{{}}', '{{}}', '{{}}', $1, $2, $3, $4, $5, $6, $7, $8)",
            teams,
            keys,
            ["debounce"] * n,
            [1] * n,
            [1] * n,
            [AT] * n,
            [None] * n,
            [None] * n,
        )
        if any(r["state"] != "held" for r in held):
            raise RuntimeError(f"{function}: a hold was not held: {dict(held[0])}")
        captured = await self.conn.fetch(
            f"SELECT * FROM {function}($1, $2, $3, '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', "
            "'{}', '{}', '{}')",
            [r["charge_id"] for r in held],
            ["captured"] * n,
            [AT] * n,
        )
        if any(r["state"] != "captured" or not r["changed"] for r in captured):
            raise RuntimeError(f"{function}: a capture did not capture: {dict(captured[0])}")
        return list(held), list(captured)


async def _foreign_key_name(conn: Conn) -> str:
    """The foreign key from charges to billing_months, by the catalog: a wrong
    guess at its name would drop nothing and measure nothing."""
    name = await conn.fetchval(
        "SELECT conname FROM pg_constraint WHERE contype = 'f' "
        "AND conrelid = 'charges'::regclass AND confrelid = 'billing_months'::regclass"
    )
    if name is None:
        raise SystemExit("charges has no foreign key to billing_months to measure")
    return str(name)


async def _foreign_key(conn: Conn, name: str, *, present: bool) -> None:
    await conn.execute(f"ALTER TABLE charges DROP CONSTRAINT IF EXISTS {name}")
    if present:
        await conn.execute(
            f"ALTER TABLE charges ADD CONSTRAINT {name} FOREIGN KEY "
            "(team_id, period_start) REFERENCES billing_months (team_id, period_start) NOT VALID"
        )


async def measure(
    base_sql: str, tree_sql: str, *, batch: int, teams: int, rounds: int, without_fk: bool
) -> dict[str, Any]:
    quiet_logs()
    async with fresh_servers("tokens-apply-ab-") as servers:
        pool = await create_pool(servers.dsn, min_size=1, max_size=1)
        try:
            ledger = Ledger(pool, DEFAULT_CATALOG)
            await ledger.sync_catalog()
            names = [f"ab-team-{i:04d}" for i in range(teams)]
            for team in names:  # as `python -m bench` does: plenty of room, month open
                await _setup_team(ledger, team)
            postmaster = await postmaster_of(pool)
            async with pool.acquire() as conn:
                await conn.execute(apply_function(base_sql, "tokens_apply_base"))
                await conn.execute(apply_function(tree_sql, "tokens_apply_tree"))
                cycles = Cycles(conn, names, batch)
                fk = await _foreign_key_name(conn) if without_fk else ""
                base_rows = await cycles.run("tokens_apply_base")
                tree_rows = await cycles.run("tokens_apply_tree")
                if [comparable(r) for r in base_rows] != [comparable(r) for r in tree_rows]:
                    raise SystemExit("the two versions of tokens_apply answer differently")
                per_round: dict[str, list[tuple[float, float]]] = {"base": [], "tree": []}
                for r in range(rounds + 1):  # round 0 warms both up, unmeasured
                    for side in ("base", "tree") if r % 2 == 0 else ("tree", "base"):
                        if without_fk:
                            await _foreign_key(conn, fk, present=side == "base")
                        function = f"tokens_apply_{side}"
                        for _ in range(WARMUP_CYCLES if r == 0 else 3):
                            await cycles.run(function)
                        if r == 0:
                            continue
                        wall0, pg0 = time.perf_counter(), postgres_cpu_s(postmaster)
                        for _ in range(CYCLES_PER_ROUND):
                            await cycles.run(function)
                        per_round[side].append(
                            (
                                (time.perf_counter() - wall0) / CYCLES_PER_ROUND * 1000,
                                (postgres_cpu_s(postmaster) - pg0) / CYCLES_PER_ROUND * 1000,
                            )
                        )
                if without_fk:
                    await _foreign_key(conn, fk, present=True)
        finally:
            await pool.close()

    def median(side: str, i: int) -> float:
        return statistics.median(x[i] for x in per_round[side])

    wall = {s: median(s, 0) for s in per_round}
    pg = {s: median(s, 1) for s in per_round}
    return {
        "batch": batch,
        "teams": teams,
        "rounds": rounds,
        "cycles_per_round": CYCLES_PER_ROUND,
        "without_foreign_key": without_fk,
        "wall_ms_per_cycle": {s: round(v, 3) for s, v in wall.items()},
        "postgres_cpu_ms_per_cycle": {s: round(v, 3) for s, v in pg.items()},
        "wall_ratio": round(wall["tree"] / wall["base"], 3),
        "postgres_cpu_ratio": round(pg["tree"] / pg["base"], 3),
        "per_round": per_round,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apply_ab", description=__doc__)
    parser.add_argument("--base", default="HEAD", help="the commit whose tokens_apply is A")
    parser.add_argument("--batch", type=int, default=32, help="holds (then captures) per call")
    parser.add_argument("--teams", type=int, default=1, help="teams the holds are spread over")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--without-foreign-key",
        action="store_true",
        help="the tree's function on both sides; the tree's rounds without the charges FK",
    )
    parser.add_argument("--json", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if min(args.batch, args.teams, args.rounds) < 1:
        parser.error("--batch, --teams and --rounds must be at least 1")
    tree_sql = (ROOT / HOLDS).read_text()
    base_sql = tree_sql if args.without_foreign_key else holds_sql_at(args.base)
    result = asyncio.run(
        measure(
            base_sql,
            tree_sql,
            batch=args.batch,
            teams=args.teams,
            rounds=args.rounds,
            without_fk=args.without_foreign_key,
        )
    )
    base_label = "with the foreign key" if args.without_foreign_key else args.base
    tree_label = "without it" if args.without_foreign_key else "the tree"
    wall, pg = result["wall_ms_per_cycle"], result["postgres_cpu_ms_per_cycle"]
    print(
        f"{args.batch} holds + {args.batch} captures over {args.teams} team(s), "
        f"medians of {args.rounds} alternated rounds of {CYCLES_PER_ROUND} cycles:\n"
        f"  {base_label:<22} wall {wall['base']:.3f} ms  Postgres CPU {pg['base']:.3f} ms\n"
        f"  {tree_label:<22} wall {wall['tree']:.3f} ms  Postgres CPU {pg['tree']:.3f} ms\n"
        f"  ratio                  wall {result['wall_ratio']:.3f}     "
        f"Postgres CPU {result['postgres_cpu_ratio']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
