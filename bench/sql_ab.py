"""Two versions of the money path's SQL functions against each other, call by call.

    python -m bench sql-ab [--base REV] [--batch 32] [--teams 1] [--rounds 10] [--json FILE]

The tool that decides whether a change to `ledger/sql/` pays, a fast path
included. A change that saves a few per cent of Postgres's CPU does not show
through the whole hold+capture path on a shared 2-core VM, where one round
moves by +-10 % against the next; this measures the functions alone.

One fresh embedded Postgres, migrated by the working tree (its tables are the
tree's). Every function of `ledger/sql/*.sql` at REV (default HEAD) is created
again in schema `ab_base`, and the tree's in `ab_tree`. Each side has its own
connection whose search_path puts its schema first, so `tokens_apply` and every
function it calls come from that side, the tables from the tree. The tree's
functions are compared with REV's, so an uncommitted change is measured against
the commit it starts from.

The connections send cycles of `--batch` holds, then their captures, straight
to `tokens_apply` (no group commit, no Ledger), in rounds alternating the
order (A B, then B A). Per cycle: the wall time at the client and the Postgres
server's CPU. Reported: per side the median over rounds, and the ratio
tree/base as the median over rounds of each round's own ratio, with its min
and max. Both sides must answer alike: their first cycles are compared field
by field (but ids, keys, times and the room left, which differ by cycle).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.hold_capture import AT, setup_team
from bench.servers import fresh_servers, postgres_cpu_s, postmaster_of, quiet_logs, spread
from db.migrate import FUNCTION_FILES
from db.pool import create_pool
from ledger.catalog import DEFAULT_CATALOG
from ledger.service import Ledger

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = "ledger/sql"
CYCLES_PER_ROUND = 60
WARMUP_CYCLES = 20
SIDES = ("base", "tree")
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

# A statement ends at a `;` outside comments, quoted strings and dollar quotes.
_TOKEN = re.compile(
    r"--[^\n]*|/\*.*?\*/|\$(\w*)\$.*?\$\1\$|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|;", re.S
)
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*)*")
_CREATE_FUNCTION = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s", re.I)


def function_statements(sql: str) -> list[str]:
    """The CREATE FUNCTION statements of a SQL file, in order, without their comments
    before them; everything else (DROP, CREATE TRIGGER, ...) is left out, as it would
    act on the tree's own objects."""
    out, start = [], 0
    for token in _TOKEN.finditer(sql):
        if token.group(0) == ";":
            statement = _LEADING_COMMENTS.sub("", sql[start : token.end()])
            if _CREATE_FUNCTION.match(statement):
                out.append(statement)
            start = token.end()
    return out


def _ordered(names: list[str]) -> list[str]:
    """SQL file names in the order migrations apply them, any others after."""
    order = [name for package, name in FUNCTION_FILES if package == "ledger.sql"]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def sql_files_at(rev: str) -> dict[str, str]:
    """`ledger/sql/*.sql` at commit `rev`, by file name."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    names = [
        Path(line).name
        for line in git("ls-tree", "--name-only", f"{rev}:{SQL_DIR}").splitlines()
        if line.endswith(".sql")
    ]
    return {name: git("show", f"{rev}:{SQL_DIR}/{name}") for name in _ordered(names)}


def sql_files_in_tree() -> dict[str, str]:
    names = [p.name for p in (ROOT / SQL_DIR).glob("*.sql")]
    return {name: (ROOT / SQL_DIR / name).read_text() for name in _ordered(names)}


async def install(conn: asyncpg.Connection, schema: str, files: dict[str, str]) -> int:
    """Every function of `files` created in `schema`, and `conn` left with that schema
    first in its search_path (so that calls between them stay on this side)."""
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(f"SET search_path = {schema}, public")
    created = 0
    for text in files.values():
        for statement in function_statements(text):
            await conn.execute(statement)
            created += 1
    if not await conn.fetchval(
        "SELECT count(*) FROM pg_proc WHERE proname = 'tokens_apply' "
        "AND pronamespace = $1::regnamespace",
        schema,
    ):
        raise SystemExit(f"no tokens_apply among the functions installed in {schema}")
    return created


def comparable(rows: list[Any], columns: set[str]) -> list[dict[str, Any]]:
    return [{k: v for k, v in dict(r).items() if k in columns - VARYING} for r in rows]


class Cycles:
    """Cycles of holds then their captures through `tokens_apply`, on one connection
    (whose search_path says which side's function that is)."""

    def __init__(
        self, conn: asyncpg.Connection, teams: list[str], batch: int, keys: itertools.count[int]
    ) -> None:
        self.conn, self.teams, self.batch, self.keys = conn, teams, batch, keys
        self.extra = 0

    async def find_arity(self, schema: str) -> None:
        """Hold arrays past the eleven every version takes (a later version may add
        some, e.g. the member): sent as arrays of NULLs, nothing set."""
        nargs = await self.conn.fetchval(
            "SELECT pronargs FROM pg_proc WHERE proname = 'tokens_apply' "
            "AND pronamespace = $1::regnamespace",
            schema,
        )
        self.extra = int(nargs) - 11

    async def run(self) -> tuple[list[Any], list[Any]]:
        n = self.batch
        teams = [self.teams[i % len(self.teams)] for i in range(n)]
        keys = [f"ab-{next(self.keys)}" for _ in range(n)]
        extra = "".join(f", ${9 + i}" for i in range(self.extra))
        held = await self.conn.fetch(
            f"SELECT * FROM tokens_apply('{{}}', '{{}}', '{{}}', $1, $2, $3, $4, $5, $6, $7, $8"
            f"{extra})",
            teams,
            keys,
            ["debounce"] * n,
            [1] * n,
            [1] * n,
            [AT] * n,
            [None] * n,
            [None] * n,
            *([[None] * n] * self.extra),
        )
        if any(r["state"] != "held" for r in held):
            raise RuntimeError(f"a hold was not held: {dict(held[0])}")
        captured = await self.conn.fetch(
            "SELECT * FROM tokens_apply($1, $2, $3, '{}', '{}', '{}', '{}', '{}', "
            "'{}', '{}', '{}'" + ", '{}'" * self.extra + ")",
            [r["charge_id"] for r in held],
            ["captured"] * n,
            [AT] * n,
        )
        if any(r["state"] != "captured" or not r["changed"] for r in captured):
            raise RuntimeError(f"a capture did not capture: {dict(captured[0])}")
        return list(held), list(captured)


async def measure(
    base: dict[str, str], tree: dict[str, str], *, batch: int, teams: int, rounds: int
) -> dict[str, Any]:
    quiet_logs()
    async with fresh_servers("tokens-sql-ab-") as servers:
        pool = await create_pool(servers.dsn, min_size=1, max_size=1)
        try:
            ledger = Ledger(pool, DEFAULT_CATALOG)
            await ledger.sync_catalog()
            names = [f"ab-team-{i:04d}" for i in range(teams)]
            for team in names:  # as hold+capture does: plenty of room, month open
                await setup_team(ledger, team)
            postmaster = await postmaster_of(pool)
        finally:
            await pool.close()
        conns = {side: await asyncpg.connect(servers.dsn) for side in SIDES}
        try:
            installed = {
                side: await install(conns[side], f"ab_{side}", files)
                for side, files in (("base", base), ("tree", tree))
            }
            keys = itertools.count()
            cycles = {side: Cycles(conns[side], names, batch, keys) for side in SIDES}
            for side in SIDES:
                await cycles[side].find_arity(f"ab_{side}")
            first = {side: await cycles[side].run() for side in SIDES}
            # The columns both versions answer (a later one may answer more).
            shared = set(first["base"][0][0].keys()) & set(first["tree"][0][0].keys())
            base_rows = [comparable(r, shared) for r in first["base"]]
            if base_rows != [comparable(r, shared) for r in first["tree"]]:
                raise SystemExit("the two versions of tokens_apply answer differently")
            per_round: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
            for r in range(rounds + 1):  # round 0 warms both up, unmeasured
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    for _ in range(WARMUP_CYCLES if r == 0 else 3):
                        await cycles[side].run()
                    if r == 0:
                        continue
                    wall0, pg0 = time.perf_counter(), postgres_cpu_s(postmaster)
                    for _ in range(CYCLES_PER_ROUND):
                        await cycles[side].run()
                    per_round[side].append(
                        (
                            (time.perf_counter() - wall0) / CYCLES_PER_ROUND * 1000,
                            (postgres_cpu_s(postmaster) - pg0) / CYCLES_PER_ROUND * 1000,
                        )
                    )
        finally:
            for conn in conns.values():
                await conn.close()

    def ratio(i: int) -> dict[str, Any]:
        pairs = zip(per_round["tree"], per_round["base"], strict=True)
        return spread([t[i] / b[i] for t, b in pairs])

    return {
        "batch": batch,
        "teams": teams,
        "rounds": rounds,
        "cycles_per_round": CYCLES_PER_ROUND,
        "functions_installed": installed,
        "wall_ms_per_cycle": {s: spread([x[0] for x in per_round[s]]) for s in SIDES},
        "postgres_cpu_ms_per_cycle": {s: spread([x[1] for x in per_round[s]]) for s in SIDES},
        "wall_ratio": ratio(0),
        "postgres_cpu_ratio": ratio(1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sql-ab", description=__doc__)
    parser.add_argument("--base", default="HEAD", help="the commit whose functions are A")
    parser.add_argument("--batch", type=int, default=32, help="holds (then captures) per call")
    parser.add_argument("--teams", type=int, default=1, help="teams the holds are spread over")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if min(args.batch, args.teams, args.rounds) < 1:
        parser.error("--batch, --teams and --rounds must be at least 1")
    base, tree = sql_files_at(args.base), sql_files_in_tree()
    result = asyncio.run(
        measure(base, tree, batch=args.batch, teams=args.teams, rounds=args.rounds)
    )
    wall, pg = result["wall_ms_per_cycle"], result["postgres_cpu_ms_per_cycle"]
    print(
        f"{args.batch} holds + {args.batch} captures over {args.teams} team(s), "
        f"{args.rounds} alternated rounds of {CYCLES_PER_ROUND} cycles, medians:"
    )
    for side, label in (("base", args.base), ("tree", "the tree")):
        print(
            f"  {label:<12} wall {wall[side]['median']:.3f} ms"
            f"  Postgres CPU {pg[side]['median']:.3f} ms per cycle"
        )
    for name, key in (("wall", "wall_ratio"), ("Postgres CPU", "postgres_cpu_ratio")):
        r = result[key]
        print(f"  tree/base {name}: {r['median']:.3f} (rounds {r['min']:.3f}-{r['max']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
