"""Every money statement selects by team, or is a documented exception.

Distributing the ledger by team (docs/scaling.md) works when each statement
reaches one team's rows: then it runs on one shard. This test reads every
named statement (the `-- name --` blocks), every function of the function
files and every SQL string the product's Python sends, and fails when one
touches a team table without a team filter, unless it is on ACROSS_TEAMS with
its reason, which must match the table of the same name in docs/scaling.md.

The rule, per statement: every team table it names is reached by its team
column (`team_id = ...`, or `id = ...` on teams) and at least one of those is
a team key (`$n`, `p_team`, `NEW.team_id`) that is not optional (`$1 IS NULL
OR team_id = $1` reads every team). A function is by team when it has a
`p_team` parameter (or, a trigger, filters by `NEW.team_id`); a statement
calling a function is by team only when the function is. Tables outside the
team tables (plans, stripe_events) are not by team either: they are listed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import asyncpg

from db.migrate import FUNCTION_FILES
from db.queries import parse

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "scaling.md"
PRODUCT_PACKAGES = ("api", "billing", "cli", "db", "ledger", "runtime", "wiring", "worker")
NAMED_FILES = (
    ("ledger.sql", "queries.sql"),
    ("billing.sql", "queries.sql"),
    ("billing.sql", "webhooks.sql"),
)

# Distributed by team (teams by its id, the others by team_id), co-located.
TEAM_TABLES = frozenset(
    {
        "teams",
        "billing_months",
        "charges",
        "bills",
        "bill_charges",
        "alerts",
        "limit_changes",
        "member_caps",
        "member_cap_changes",
        "member_months",
    }
)
REFERENCE_TABLES = frozenset({"plans"})
LOCAL_TABLES = frozenset({"stripe_events", "schema_migrations"})
TABLES = TEAM_TABLES | REFERENCE_TABLES | LOCAL_TABLES

# Statements that do not select by team, with the reason. Names: a named
# statement, a function, or `path:CONSTANT` / `path:function` for SQL in Python.
ACROSS_TEAMS: dict[str, str] = {
    # All teams on purpose: sweeps, reconcile runs, checks.
    "expire_holds": "the hold-expiry sweep over every team's stale holds",
    "tokens_expire_holds": "the hold-expiry sweep over every team's stale holds",
    "stale_holds": "every team's stale holds and their jobs (the sweep's first read)",
    "list_teams": "tokens teams: every team with its current billing month",
    "ledger_drift": "the drift check over every team's months",
    "member_drift": "the drift check over every capped member",
    "create_bills": "reconcile: every team's due months when team is NULL",
    "tokens_create_bills": "reconcile: every team's due months when p_team is NULL",
    "bills_to_send": "reconcile: every team's unfinished bills when team is NULL",
    "all_bills": "every bill (tokens bills without --team)",
    "list_bills": "every team's bills when team is NULL; its reissue join by bill id",
    "worker/alerts.py:_NEXT_DUE": "the alert outbox: the next due alert of any team",
    # By another key: a charge, a bill, an invoice, an event.
    "apply": "a group-commit batch: holds of several teams, settlements by charge id",
    "tokens_apply": "a group-commit batch: holds of several teams, settlements by charge id",
    "tokens_settle": "one settlement by charge id",
    "get_charge": "one charge by id",
    "billing_section": "teams joined through tokens_open_month's result, not by $1",
    "claim_bill": "a bill by id (the sender's lease)",
    "record_step": "a bill by id and lease token",
    "record_decline": "a bill by id and lease token",
    "record_stripe_declines": "a bill by id and lease token",
    "count_pay_attempt": "a bill by id and lease token",
    "record_error": "a bill by id and lease token",
    "release_lease": "a bill by id and lease token",
    "get_bill": "a bill by id",
    "show_bill": "a bill by id, and its reissue by bill id",
    "bill_charges": "a bill's reissue chain by bill id (a recursive CTE)",
    "reissue_bill": "tokens_reissue_bill: a bill by id",
    "tokens_reissue_bill": "a bill by id",
    "claim_for_reissue": "a bill by id",
    "follow_paid": "a bill by id and lease token",
    "invoice_news": "a Stripe webhook: bills by Stripe invoice id",
    "invoice_bill": "a Stripe webhook: a bill by Stripe invoice id",
    "worker/alerts.py:_DELIVERED": "an alert by id (the outbox)",
    "worker/alerts.py:_FAILED": "an alert by id (the outbox)",
    # Not team data at all.
    "upsert_plan": "plans: the catalog, a reference table",
    "record_event": "stripe_events by event id (coordinator-local)",
    "lock_event": "stripe_events by event id (coordinator-local)",
    "event_handled": "stripe_events by event id (coordinator-local)",
    "db/migrate.py:migrate": "schema_migrations and DDL (coordinator)",
    "db/migrate.py:pending": "schema_migrations (coordinator)",
}

# Team tables without a team_id column: they need one before they can be distributed.
WITHOUT_TEAM_ID = {"bill_charges"}
# Unique constraints and foreign keys of team tables that do not include the
# team column: each changes before distribution (docs/scaling.md).
UNIQUE_WITHOUT_TEAM = {
    "charges_pkey",
    "bills_pkey",
    "bills_public_id_key",
    "bills_reissue_of_key",
    "bill_charges_pkey",
    "alerts_pkey",
    "alerts_public_id_key",
    "limit_changes_pkey",
    "member_cap_changes_pkey",
}
FOREIGN_KEYS_WITHOUT_TEAM = {
    "bills_reissue_of_fkey",
    "bill_charges_charge_id_fkey",
    "bill_charges_bill_id_fkey",
}

# -- the checker ---------------------------------------------------------------

_KEY = r"(?:\$\d+|\bp_team\b|\bNEW\.team_id\b)"
_TABLE_REF = re.compile(
    r"\b(?:FROM|JOIN|UPDATE|INTO)\s+(?:ONLY\s+)?([a-z_][a-z0-9_]*)\b(?:\s+(?:AS\s+)?([a-z_][a-z0-9_]*))?",
    re.IGNORECASE,
)
_NOT_ALIAS = frozenset(
    {"where", "set", "join", "left", "right", "inner", "full", "cross", "natural", "on"}
    | {"using", "order", "group", "limit", "for", "values", "select", "returning", "offset"}
    | {"union", "with", "lateral", "default", "as", "do"}
)
_CALL = re.compile(r"\b(tokens_[a-z0-9_]+)\s*\(")
_FUNCTION = re.compile(
    r"^CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([a-z_][a-z0-9_]*)\s*\(",
    re.IGNORECASE | re.MULTILINE,
)
_NEXT_OBJECT = re.compile(
    r"^(?:CREATE|DROP)\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|TRIGGER)\b", re.IGNORECASE | re.MULTILINE
)
_INSERT = re.compile(
    r"INSERT\s+INTO\s+([a-z_]+)\s*\(([^)]*)\)\s*VALUES\s*\(([^)]*)\)", re.IGNORECASE | re.DOTALL
)


def strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


@dataclass
class Verdict:
    by_team: bool
    why: str
    tables: set[str] = field(default_factory=set)


def table_refs(sql: str) -> list[tuple[str, str | None]]:
    """(table, alias) of every known table the statement reads or writes."""
    out = []
    for m in _TABLE_REF.finditer(sql):
        table = m.group(1).lower()
        if table not in TABLES:
            continue
        alias = (m.group(2) or "").lower() or None
        if alias in _NOT_ALIAS:
            alias = None
        out.append((table, alias))
    return out


def _column(name: str | None, column: str) -> str:
    qualifier = rf"\b{re.escape(name)}\." if name else r"(?<![\w.])"
    return qualifier + column + r"\b"


def _reached_by_team(sql: str, table: str, alias: str | None) -> bool:
    """The table's team column is compared with something (a key or another team column)."""
    column = "id" if table == "teams" else "team_id"
    names = [alias, table] if alias else [None, table]
    for name in names:
        col = _column(name, column)
        if re.search(col + r"\s*=", sql) or re.search(r"=\s*" + col, sql):
            return True
    if table != "teams":  # INSERT INTO t (team_id, ...) VALUES (...)
        return any(t == table and "team_id" in cols for t, cols, _ in _INSERT.findall(sql))
    return False


def _team_keys(sql: str, refs: list[tuple[str, str | None]]) -> list[str]:
    """The keys a team column is compared with: `$1`, `p_team`, `NEW.team_id`."""
    keys: list[str] = []
    columns = [r"(?:\b\w+\.|(?<![\w.]))team_id\b"]
    for table, alias in refs:
        if table == "teams":
            columns.append(_column(alias, "id"))
            columns.append(_column("teams", "id"))
    for col in columns:
        keys += re.findall(col + r"\s*=\s*(" + _KEY + ")", sql)
        keys += re.findall("(" + _KEY + r")\s*=\s*" + col, sql)
    for _, cols, values in _INSERT.findall(sql):
        names = [c.strip().lower() for c in cols.split(",")]
        vals = [v.strip() for v in values.split(",")]
        if "team_id" in names and len(vals) == len(names):
            value = vals[names.index("team_id")]
            if re.fullmatch(_KEY, value):
                keys.append(value)
    return keys


def _optional(sql: str, key: str) -> bool:
    """`$1::text IS NULL OR team_id = $1`: every team when the key is NULL."""
    return re.search(re.escape(key) + r"(?:::\w+)?\s+IS\s+NULL\b", sql, re.IGNORECASE) is not None


@dataclass
class Function:
    name: str
    params: list[str]
    body: str


def functions_of(text: str) -> dict[str, Function]:
    """Each CREATE FUNCTION: its parameter names and the text up to the next object."""
    text = strip_comments(text)
    out = {}
    for m in _FUNCTION.finditer(text):
        depth, end = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        params = [
            p.split()[1] if p.split()[0].upper() in ("IN", "OUT", "INOUT") else p.split()[0]
            for p in _split_params(text[m.end() : end - 1])
        ]
        following = _NEXT_OBJECT.search(text, end)
        body = text[end : following.start() if following else len(text)]
        out[m.group(1).lower()] = Function(m.group(1).lower(), params, body)
    return out


def _split_params(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [p for p in [*parts, current.strip()] if p]


class Checker:
    """Judges statements against the team tables, knowing the function files."""

    def __init__(self, functions: dict[str, Function]) -> None:
        self.functions = functions
        self._verdicts: dict[str, Verdict] = {}

    def function(self, name: str) -> Verdict:
        if name not in self._verdicts:
            self._verdicts[name] = Verdict(True, "being judged")  # recursion guard
            self._verdicts[name] = self._judge_function(self.functions[name])
        return self._verdicts[name]

    def _judge_function(self, f: Function) -> Verdict:
        sql = f.body
        tables = {t for t, _ in table_refs(sql)}
        for called in set(_CALL.findall(sql)) - {f.name}:
            if called in self.functions:
                tables |= self.function(called).tables
        if not tables:
            return Verdict(True, "touches no table", tables)
        if not tables & TEAM_TABLES:
            return Verdict(False, f"not team data: {sorted(tables)}", tables)
        keyed = "p_team" in f.params or re.search(r"=\s*NEW\.team_id\b", sql) is not None
        if not keyed:
            return Verdict(False, "no p_team parameter", tables)
        if _optional(sql, "p_team"):
            return Verdict(False, "p_team may be NULL: every team", tables)
        return Verdict(True, "by its team (p_team, NEW.team_id)", tables)

    def statement(self, sql: str) -> Verdict:
        sql = strip_comments(sql)
        refs = table_refs(sql)
        tables = {t for t, _ in refs}
        for called in set(_CALL.findall(sql)):
            if called not in self.functions:
                continue
            v = self.function(called)
            tables |= v.tables
            if not v.by_team:
                return Verdict(False, f"calls {called} ({v.why})", tables)
            f = self.functions[called]
            if (
                "p_team" in f.params
                and v.tables & TEAM_TABLES
                and not re.search(
                    rf"\b{called}\s*\(\s*(?:[^,()]*,\s*){{{f.params.index('p_team')}}}\$\d+", sql
                )
            ):
                return Verdict(False, f"calls {called} without a team parameter", tables)
        if not tables:
            return Verdict(True, "touches no table", tables)
        direct = {t for t, _ in refs}
        if not tables & TEAM_TABLES:
            return Verdict(False, f"not team data: {sorted(tables)}", tables)
        if not direct & TEAM_TABLES:
            return Verdict(True, "through functions by team", tables)
        for table, alias in refs:
            if table in TEAM_TABLES and not _reached_by_team(sql, table, alias):
                return Verdict(False, f"{table} is not reached by its team column", tables)
        keys = _team_keys(sql, refs)
        if not keys:
            return Verdict(False, "no team key ($n, p_team)", tables)
        if all(_optional(sql, k) for k in keys):
            return Verdict(False, "the team filter is optional: every team", tables)
        return Verdict(True, "by team key " + ", ".join(sorted(set(keys))), tables)


# -- the statements of the product -----------------------------------------------


def function_files() -> dict[str, Function]:
    out: dict[str, Function] = {}
    for package, name in FUNCTION_FILES:
        out |= functions_of(resources.files(package).joinpath(name).read_text())
    return out


def named_statements() -> dict[str, str]:
    out: dict[str, str] = {}
    for package, name in NAMED_FILES:
        for query, sql in parse(resources.files(package).joinpath(name).read_text()).items():
            assert query not in out, f"{query} is named in two files"
            out[query] = sql
    return out


_SQL_METHODS = frozenset(
    {"fetch", "fetchrow", "fetchval", "execute", "executemany", "prepare", "cursor"}
)


def _module_strings(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out[node.targets[0].id] = node.value.value
    return out


def python_sql(root: Path = ROOT) -> tuple[dict[str, list[str]], list[str]]:
    """SQL the product's Python sends other than named statements:
    {`path:CONSTANT` or `path:function`: [sql, ...]}, and the calls whose SQL
    could not be read (`path:function`, an argument that is neither a literal,
    a module constant nor `q(...)`)."""
    trees = {}
    for package in PRODUCT_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            trees[path.relative_to(root).as_posix()] = ast.parse(path.read_text())
    constants = {rel: _module_strings(tree) for rel, tree in trees.items()}
    found: dict[str, list[str]] = {}
    unread: list[str] = []
    for rel, tree in trees.items():
        imported = _imported_constants(tree, constants)
        for func, call in _sql_calls(tree):
            arg = call.args[0]
            if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "q":
                continue  # a named statement: checked with the .sql files
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.setdefault(f"{rel}:{func}", []).append(arg.value)
            elif isinstance(arg, ast.Name) and arg.id in constants[rel]:
                found.setdefault(f"{rel}:{arg.id}", []).append(constants[rel][arg.id])
            elif isinstance(arg, ast.Name) and arg.id in imported:
                where, sql = imported[arg.id]
                found.setdefault(f"{where}:{arg.id}", []).append(sql)
            else:
                unread.append(f"{rel}:{func}")
    return found, unread


def _imported_constants(
    tree: ast.Module, constants: dict[str, dict[str, str]]
) -> dict[str, tuple[str, str]]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            rel = node.module.replace(".", "/") + ".py"
            for alias in node.names:
                if alias.name in constants.get(rel, {}):
                    out[alias.asname or alias.name] = (rel, constants[rel][alias.name])
    return out


def _sql_calls(tree: ast.Module) -> list[tuple[str, ast.Call]]:
    """(enclosing function, call) of every `x.fetch(...)`-like call with arguments."""
    out: list[tuple[str, ast.Call]] = []

    def walk(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = func
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in _SQL_METHODS
                and child.args
            ):
                out.append((func, child))
            walk(child, name)

    walk(tree, "<module>")
    return out


# Calls whose SQL is not a literal: what they run, and why that is not team data.
UNREAD_SQL = {
    "db/migrate.py:migrate": "runs the migration and function files (DDL)",
}


def all_statements() -> dict[str, Verdict]:
    functions = function_files()
    checker = Checker(functions)
    out = {name: checker.statement(sql) for name, sql in named_statements().items()}
    for name in functions:
        out[name] = checker.function(name)
    found, _ = python_sql()
    for name, sqls in found.items():
        verdicts = [checker.statement(sql) for sql in sqls]
        bad = [v for v in verdicts if not v.by_team]
        out[name] = bad[0] if bad else verdicts[0]
    return out


def doc_section(title: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"^##+ {re.escape(title)}\n(.*?)(?=^##+ |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"docs/scaling.md has no section '{title}'"
    return m.group(1)


def doc_table_names(title: str) -> set[str]:
    """The names in backticks in the first column of the section's tables."""
    names = set()
    for line in doc_section(title).splitlines():
        m = re.match(r"\|\s*((?:`[^`]+`[,\s]*)+)\|", line)
        if m:
            names |= set(re.findall(r"`([^`]+)`", m.group(1)))
    return names


# -- the tests -------------------------------------------------------------------


def test_every_statement_selects_by_team_or_is_listed() -> None:
    verdicts = all_statements()
    unlisted = {n: v.why for n, v in verdicts.items() if not v.by_team and n not in ACROSS_TEAMS}
    assert unlisted == {}, "statements not by team: select by team, or list them with a reason"
    stale = {n for n in ACROSS_TEAMS if n not in verdicts or verdicts[n].by_team}
    assert stale == set(), "listed but by team now (or gone): take them off ACROSS_TEAMS"


def test_the_list_is_the_documented_one() -> None:
    assert doc_table_names("Statements not by team") == set(ACROSS_TEAMS)


def test_python_sends_no_sql_it_cannot_show() -> None:
    _, unread = python_sql()
    assert set(unread) == set(UNREAD_SQL)


def test_the_checker_reads_the_statements_it_should() -> None:
    """Some known verdicts, so that a checker that passes everything fails here."""
    verdicts = all_statements()
    for name in (
        "history",
        "member_spend",
        "set_team",
        "remove_member_cap",
        "team_bills",
        "end_subscription",
        "tokens_open_month",
        "tokens_usage_alerts",
        "ledger/alerts.py:TEAM_ALERTS",
        "billing/reconcile.py:reconcile",
        "ledger/team_changes.py:member_cap_changes",
    ):
        assert verdicts[name].by_team, (name, verdicts[name].why)
    assert "team_id" in named_statements()["history"]
    assert not verdicts["tokens_hold_fits"].tables  # pure: touches nothing
    assert verdicts["api/app.py:healthz"].why == "touches no table"


def test_a_new_unscoped_statement_is_flagged() -> None:
    checker = Checker(function_files())
    flagged = {
        "all charges": "SELECT * FROM charges WHERE state = 'held'",
        "by id only": "UPDATE bills SET status = $2 WHERE id = $1",
        "optional team": "SELECT * FROM alerts WHERE ($1::text IS NULL OR team_id = $1)",
        "one table keyed, one not": (
            "SELECT * FROM charges c JOIN bills b ON b.id = c.id WHERE c.team_id = $1"
        ),
        "team compared with a non-key": "SELECT * FROM limit_changes WHERE team_id = actor",
        "an all-teams function": "SELECT * FROM tokens_create_bills(NULL, $1)",
        "a batch function": "SELECT * FROM tokens_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, "
        "$10, $11, $12)",
        "teams by another column": "SELECT * FROM teams WHERE stripe_customer = $1",
        "insert without a team key": (
            "INSERT INTO member_caps (team_id, member, cap, updated_at) "
            "SELECT team_id, $1, $2, $3 FROM member_caps"
        ),
        "plans": "SELECT * FROM plans",
        "a keyed insert beside an unkeyed update": (
            "WITH a AS (INSERT INTO alerts (team_id, kind) VALUES ($1, 'free')) "
            "UPDATE bills SET status = 'void'"
        ),
    }
    for what, sql in flagged.items():
        assert not checker.statement(sql).by_team, what
    passing = {
        "by team": "SELECT * FROM charges WHERE team_id = $1 AND id = $2",
        "teams by id": "UPDATE teams t SET seats = $2 WHERE t.id = $1",
        "insert": "INSERT INTO alerts (team_id, period_start) VALUES ($1, $2)",
        "join on team": (
            "SELECT * FROM charges c JOIN billing_months b ON b.team_id = c.team_id "
            "WHERE c.team_id = $1"
        ),
        "function by team": "SELECT * FROM tokens_open_month($1, $2)",
        "no table": "SELECT 1",
    }
    for what, sql in passing.items():
        assert checker.statement(sql).by_team, what


def test_a_new_unscoped_function_is_flagged() -> None:
    text = """
CREATE FUNCTION tokens_close_all(p_at timestamptz)
RETURNS void
LANGUAGE sql AS $$
    UPDATE billing_months SET closed_at = p_at WHERE period_end <= p_at
$$;

CREATE FUNCTION tokens_wrapper(p_at timestamptz)
RETURNS void
LANGUAGE sql AS $$ SELECT tokens_close_all(p_at) $$;

CREATE FUNCTION tokens_close(p_team text, p_at timestamptz)
RETURNS void
LANGUAGE sql AS $$
    UPDATE billing_months SET closed_at = p_at WHERE team_id = p_team
$$;
"""
    functions = functions_of(text)
    assert set(functions) == {"tokens_close_all", "tokens_wrapper", "tokens_close"}
    checker = Checker(functions)
    assert not checker.function("tokens_close_all").by_team
    assert not checker.function("tokens_wrapper").by_team  # through what it calls
    assert checker.function("tokens_close").by_team
    assert not checker.statement("SELECT tokens_close(NULL, $1)").by_team


def test_inline_sql_in_python_is_found(tmp_path: Path) -> None:
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "x.py").write_text(
        '_ALL = "SELECT * FROM charges"\n'
        "async def sweep(pool, sql):\n"
        "    await pool.fetch(_ALL)\n"
        '    await pool.execute("DELETE FROM alerts WHERE id = $1", 1)\n'
        "    await pool.fetch(sql)\n"
        '    await pool.fetchrow(f"SELECT * FROM {sql}")\n'
        '    await pool.fetch(q("history"), "t")\n'
    )
    for package in PRODUCT_PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    found, unread = python_sql(tmp_path)
    assert found == {
        "worker/x.py:_ALL": ["SELECT * FROM charges"],
        "worker/x.py:sweep": ["DELETE FROM alerts WHERE id = $1"],
    }
    assert unread == ["worker/x.py:sweep", "worker/x.py:sweep"]
    checker = Checker(function_files())
    assert not any(checker.statement(s).by_team for sqls in found.values() for s in sqls)


# -- the schema: what changes before the tables can be distributed ----------------------

TABLES_IN_DB = """
SELECT c.relname FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
"""
TEAM_COLUMN = """
SELECT table_name FROM information_schema.columns
WHERE table_schema = 'public' AND column_name = 'team_id'
"""
# Unique indexes (constraints or not) and foreign keys, with their columns.
UNIQUE_INDEXES = """
SELECT i.indrelid::regclass::text AS table_name, c.relname AS name,
       array_agg(a.attname::text) AS columns
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indisunique AND c.relnamespace = 'public'::regnamespace
GROUP BY 1, 2
"""
FOREIGN_KEYS = """
SELECT conrelid::regclass::text AS table_name, conname AS name,
       confrelid::regclass::text AS target,
       array(SELECT attname::text FROM pg_attribute
             WHERE attrelid = conrelid AND attnum = ANY (conkey)) AS columns
FROM pg_constraint
WHERE contype = 'f' AND connamespace = 'public'::regnamespace
"""


def _team_column(table: str) -> str:
    return "id" if table == "teams" else "team_id"


async def test_every_table_is_placed(pool: asyncpg.Pool) -> None:
    tables = {r["relname"] for r in await pool.fetch(TABLES_IN_DB)}
    assert tables == TABLES, "a new table: by team, reference or local? (docs/scaling.md)"
    with_team = {r["table_name"] for r in await pool.fetch(TEAM_COLUMN)}
    assert TEAM_TABLES - with_team - {"teams"} == WITHOUT_TEAM_ID


async def test_constraints_without_the_team_are_the_documented_ones(pool: asyncpg.Pool) -> None:
    unique = {
        r["name"]
        for r in await pool.fetch(UNIQUE_INDEXES)
        if r["table_name"] in TEAM_TABLES and _team_column(r["table_name"]) not in r["columns"]
    }
    assert unique == UNIQUE_WITHOUT_TEAM
    foreign = {
        r["name"]
        for r in await pool.fetch(FOREIGN_KEYS)
        if r["table_name"] in TEAM_TABLES
        and r["target"] not in REFERENCE_TABLES
        and _team_column(r["table_name"]) not in r["columns"]
    }
    assert foreign == FOREIGN_KEYS_WITHOUT_TEAM
    documented = doc_table_names("Keys that must include the team")
    assert documented == UNIQUE_WITHOUT_TEAM | FOREIGN_KEYS_WITHOUT_TEAM | WITHOUT_TEAM_ID
