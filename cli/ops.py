"""`tokens migrate`, `tokens check`, `tokens stop`, `tokens servers`: the servers and the schema."""

from __future__ import annotations

from cli import render
from cli.common import JsonOpt, run, settings_for
from db.migrate import migrate as run_migrations
from ledger.errors import TokensError
from wiring.pools import connect_pool


def migrate(json_out: JsonOpt = False) -> None:
    """Create or upgrade the schema (idempotent)."""
    settings = settings_for()

    async def go() -> tuple[list[str], str]:
        pool = await connect_pool(settings, max_size=1)
        try:
            async with pool.acquire() as conn:
                result = await run_migrations(conn)
            return result.applied, result.head
        finally:
            await pool.close()

    applied, head = run(go())
    if json_out:
        render.print_json({"applied": applied, "head": head})
    else:
        print(f"applied: {', '.join(applied)}" if applied else "already at head")
        print(f"head: {head}")


def check(json_out: JsonOpt = False) -> None:
    """Health: Postgres, migrations at head, Redis, Stripe reachability (exit 1 if not ok)."""
    settings = settings_for()
    from wiring.health import run_checks

    results = run(run_checks(settings))
    if json_out:
        render.print_json(results)
    else:
        for name, value in results.items():
            print(f"{name}: {value}")
    bad = [name for name, value in results.items() if not str(value).startswith("ok")]
    if bad:
        raise CheckFailed(bad)


class CheckFailed(TokensError):
    code = "check_failed"

    def __init__(self, bad: list[str]) -> None:
        super().__init__(f"not healthy: {', '.join(bad)}")


def stop(json_out: JsonOpt = False) -> None:
    """Stop the embedded servers of this data dir."""
    settings = settings_for()
    from runtime.embedded import stop_servers

    stopped = stop_servers(settings.data_dir)
    if json_out:
        render.print_json({"stopped": stopped, "data_dir": str(settings.data_dir)})
    else:
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def servers(json_out: JsonOpt = False) -> None:
    """Where the embedded servers of this data dir are (starts nothing)."""
    settings = settings_for()
    from runtime.embedded import server_status

    status = server_status(settings.data_dir)
    if json_out:
        render.print_json(status)
    else:
        for k, v in status.items():
            print(f"{k}: {v}")
