"""The migrations produce exactly the schema the SQLModel classes describe."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import SQLModel

import billing.models  # noqa: F401  (registers the tables)
import ledger.models  # noqa: F401
from billing import webhook_events  # noqa: F401  (registers stripe_events)
from db.migrate import migrate, pending
from tests.conftest import with_database

COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, column_default,
       numeric_precision, numeric_scale, is_identity, identity_generation
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name <> 'schema_migrations'
ORDER BY table_name, column_name
"""
CONSTRAINTS = """
SELECT conrelid::regclass::text AS table_name, conname, contype, pg_get_constraintdef(oid) AS def
FROM pg_constraint
WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'schema_migrations'
ORDER BY 1, 2
"""
INDEXES = """
SELECT tablename, indexname, indexdef FROM pg_indexes
WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
ORDER BY 1, 2
"""


async def describe(conn: asyncpg.Connection) -> dict[str, list[Any]]:
    return {
        name: [tuple(r) for r in await conn.fetch(sql)]
        for name, sql in (("columns", COLUMNS), ("constraints", CONSTRAINTS), ("indexes", INDEXES))
    }


async def test_migrations_match_models(server_dsn: str, database_url: str) -> None:
    migrated = await asyncpg.connect(database_url)
    admin = await asyncpg.connect(server_dsn)
    await admin.execute("DROP DATABASE IF EXISTS schema_from_models")
    await admin.execute("CREATE DATABASE schema_from_models")
    from_models = await asyncpg.connect(with_database(server_dsn, "schema_from_models"))
    try:
        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        for table in SQLModel.metadata.sorted_tables:
            await from_models.execute(str(CreateTable(table).compile(dialect=dialect)))
            for index in table.indexes:
                await from_models.execute(str(CreateIndex(index).compile(dialect=dialect)))
        expected = await describe(from_models)
        actual = await describe(migrated)
        for part in expected:
            assert actual[part] == expected[part], part
        assert len(expected["columns"]) > 40
    finally:
        await from_models.close()
        await admin.execute("DROP DATABASE schema_from_models")
        await admin.close()
        await migrated.close()


async def test_migrate_twice_applies_nothing(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await pending(conn) == []
        assert (await migrate(conn)).applied == []
    finally:
        await conn.close()


async def test_constraints_reject_a_wrong_balance(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO plans VALUES ('p', 10, true, false, true, 0.01, 5000, 'usd');"
            "INSERT INTO teams (id, plan, seats, billing_interval, anchor, created_at, updated_at)"
            " VALUES ('t', 'p', 1, 'month', now(), now(), now());"
            "INSERT INTO billing_months (team_id, period_start, period_end, free_granted,"
            " unit_price, currency) VALUES ('t', '2026-01-01', '2026-02-01', 10, 0.01, 'usd')"
        )
        for bad, constraint in [
            ("UPDATE billing_months SET free_spent = 11", "billing_months_free_within_grant"),
            (
                "UPDATE billing_months SET additional_billed = 1",
                "billing_months_billed_within_spent",
            ),
            ("UPDATE billing_months SET additional_held = -1", "billing_months_totals_nonneg"),
            ("UPDATE teams SET seats = -1", "teams_seats_nonneg"),
            ("UPDATE teams SET billing_interval = 'week'", "teams_interval_valid"),
        ]:
            try:
                await conn.execute(bad)
            except asyncpg.CheckViolationError as exc:
                assert exc.constraint_name == constraint
            else:
                raise AssertionError(f"{bad} was accepted")
    finally:
        await conn.close()


def test_a_bill_row_keeps_every_column_of_bills() -> None:
    """The bills read from `SELECT *` carry every column the table class describes."""
    from dataclasses import fields

    from billing.models import Bill
    from billing.rows import BillRow

    assert [f.name for f in fields(BillRow)] == list(Bill.__table__.columns.keys())  # type: ignore[attr-defined]


def test_reading_a_bill_does_not_import_sqlalchemy() -> None:
    """Reading, sending and showing bills needs no SQLAlchemy: only the schema test does."""
    import subprocess
    import sys

    code = (
        "import sys, billing.bills, billing.reconcile, billing.sender, billing.webhooks, "
        "api.bills, api.schemas; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'sqlmodel')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
