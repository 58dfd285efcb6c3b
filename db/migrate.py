"""Versioned SQL migrations plus the re-applied function files.

`db/migrations/NNNN_name.sql` run once each, in order; the function files
(the money path's PL/pgSQL) are re-applied whenever their text changes. All in
one transaction under an advisory lock, so concurrent `tokens migrate` runs
and a half-applied schema are both impossible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from db.pool import Conn

MIGRATIONS_PACKAGE = "db.migrations"
# Re-applied, in this order, after the versioned migrations whenever they change.
FUNCTION_FILES = (
    ("ledger.sql", "errors.sql"),
    ("ledger.sql", "periods.sql"),
    ("ledger.sql", "holds.sql"),
    ("ledger.sql", "teams.sql"),
    ("billing.sql", "functions.sql"),
    ("ledger.sql", "alerts.sql"),
)

_LOCK_KEY = 0x70_6B_6E_73  # arbitrary, fixed: "tkns"
# A migration may rewrite a large table: it is not held to the pool's statement timeout
# (Postgres' is lifted for its transaction, asyncpg's replaced by this one).
MIGRATION_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class MigrationResult:
    applied: list[str]
    head: str


def _versioned() -> list[tuple[str, str]]:
    files = resources.files(MIGRATIONS_PACKAGE)
    found = sorted(f.name for f in files.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), files.joinpath(name).read_text()) for name in found]


def _repeatable() -> list[tuple[str, str]]:
    out = []
    for package, name in FUNCTION_FILES:
        try:
            text = resources.files(package).joinpath(name).read_text()
        except (FileNotFoundError, ModuleNotFoundError):
            continue
        out.append((f"{package}/{name}", text))
    return out


def head() -> str:
    return _versioned()[-1][0]


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def migrate(conn: Conn) -> MigrationResult:
    """Bring the database to head; a no-op when it is there already."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SET LOCAL statement_timeout = 0")
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", _LOCK_KEY, timeout=MIGRATION_TIMEOUT_S
        )
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        for version, sql in _versioned():
            if version in done:
                continue
            await conn.execute(sql, timeout=MIGRATION_TIMEOUT_S)
            await conn.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                version,
                _checksum(sql),
            )
            applied.append(version)
        for name, sql in _repeatable():
            checksum = _checksum(sql)
            if done.get(name) == checksum:
                continue
            await conn.execute(sql, timeout=MIGRATION_TIMEOUT_S)
            await conn.execute(
                """INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)
                   ON CONFLICT (version) DO UPDATE
                   SET checksum = EXCLUDED.checksum, applied_at = now()""",
                name,
                checksum,
            )
            applied.append(name)
    return MigrationResult(applied=applied, head=head())


async def pending(conn: Conn) -> list[str]:
    """What `migrate` would apply; empty when the schema is at head."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done: dict[str, str] = {}
    if exists:
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
    todo = [v for v, _ in _versioned() if v not in done]
    todo += [n for n, sql in _repeatable() if done.get(n) != _checksum(sql)]
    return todo
