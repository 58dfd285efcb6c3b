"""The benchmark report: a full run rewrites its sections and keeps everyone else's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.apply_ab import apply_function
from bench.apply_statements import step_of
from bench.report import breakdown_table, merge_sections, user_mode_overhead

OLD = """# Benchmarks
old intro

## Latest quick run
by hand

## Targets
old targets

## Issue 15, part 2
by hand, after the targets

## hold + capture
old table

## One implementation per ledger operation: before and after
by bench/before_after.py
"""

NEW = """# Benchmarks
new intro

## Targets
new targets

## hold + capture
new table

## Where Postgres spends a tokens_apply call
new section
"""


def test_a_full_run_rewrites_its_sections_and_keeps_the_others_in_place() -> None:
    merged = merge_sections(OLD, NEW)
    headings = [line for line in merged.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Latest quick run",
        "## Targets",
        "## Issue 15, part 2",
        "## hold + capture",
        "## One implementation per ledger operation: before and after",
        "## Where Postgres spends a tokens_apply call",
    ]
    assert merged.startswith("# Benchmarks\nnew intro\n")
    assert "new targets" in merged and "old targets" not in merged
    assert "old table" not in merged
    assert "by hand, after the targets" in merged and "by bench/before_after.py" in merged


def test_a_first_run_writes_only_its_own_sections() -> None:
    assert merge_sections("", NEW) == NEW


def test_statements_of_tokens_apply_are_told_apart_by_their_text() -> None:
    assert step_of("INSERT INTO charges (team_id, period_start)") == "6. insert the charges"
    assert step_of("SELECT 'hold', u.i::integer, h_code[u.i]") == "7. answer the holds"
    assert (
        step_of("WITH done AS (\n  UPDATE charges ch SET state = s_state[1]")
        == "4. settle the charges"
    )
    assert step_of("SELECT something else") == "other: SELECT something else"


def _breakdown(**extra: object) -> dict[str, object]:
    cpu = {
        "noop": 1.0,
        "metered": 1.25,
        "metered_postgres_in_process": 1.1,
        "metered_production_logs": 1.3,
    }
    over = {k: round((v - 1) * 100, 2) for k, v in cpu.items() if k != "noop"}
    return {"cpu_ms_per_job": cpu, "cpu_overhead_pct": over, **extra}


def test_the_breakdown_shows_how_often_the_worker_slept_per_job() -> None:
    sleeps = {
        "noop": 3.43,
        "metered": 3.22,
        "metered_postgres_in_process": 3.14,
        "metered_production_logs": 3.11,
    }
    table = breakdown_table(_breakdown(sleeps_per_job=sleeps))
    assert "worker sleeps per job" in table.splitlines()[0]
    assert "| no-op job (the baseline) | 1.000 | - | - | 3.43 |" in table
    assert "| metered job | 1.250 | **25.0 %** | - | 3.22 |" in table


def test_a_breakdown_from_before_sleeps_were_counted_still_renders() -> None:
    table = breakdown_table(_breakdown())
    assert "| metered job | 1.250 | **25.0 %** | - | - |" in table


def test_the_breakdown_shows_the_overhead_inuser_mode_overhead_cpu() -> None:
    user = {"metered": 31.25, "metered_postgres_in_process": 12.0, "metered_production_logs": 40}
    table = breakdown_table(_breakdown(user_cpu_overhead_pct=user))
    assert "user-mode CPU only" in table.splitlines()[0]
    assert "| no-op job (the baseline) | 1.000 | - | - | - |" in table
    assert "| metered job | 1.250 | **25.0 %** | 31.2 % | - |" in table


def test_apply_ab_installs_the_money_function_under_another_name() -> None:
    holds_sql = (Path(__file__).resolve().parent.parent / "ledger/sql/holds.sql").read_text()
    created = apply_function(holds_sql, "tokens_apply_tree")
    assert created.startswith("CREATE OR REPLACE FUNCTION tokens_apply_tree(")
    assert created.endswith("$$;")
    # Only tokens_apply: not the wrappers after it, which call it by its own name.
    assert "CREATE FUNCTION tokens_hold" not in created
    assert "tokens_apply(" not in created.removeprefix("CREATE OR REPLACE FUNCTION ")


def test_apply_ab_refuses_a_file_without_the_money_function() -> None:
    with pytest.raises(ValueError, match="no CREATE FUNCTION tokens_apply"):
        apply_function("CREATE FUNCTION tokens_hold() ...", "x")


def test_the_overhead_inuser_mode_overhead_cpu_is_shown_where_the_run_measured_it() -> None:
    measured = {"user_cpu_overhead_pct": 21.04, "hot_team": {"user_cpu_overhead_pct": 30.96}}
    assert user_mode_overhead(measured) == "; user-mode CPU only 21.0 % (hot team 31.0 %)"
    # A run from before the evening of 2026-12-07 has no such figure: nothing is added.
    assert user_mode_overhead({"hot_team": {}}) == ""
