"""The `tokens` command line (README, "Command line"): one module per command group,
registered here, and the exit codes.

Every refused input ends with one line on stderr and a non-zero exit:
1 for a refusal by the ledger or bad values, 2 for a malformed command line or
bad configuration, 3 when Postgres or Redis cannot be reached.
"""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError

# typer >= 0.29 vendors click; these are the classes its parser raises.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from cli import alerts, bills, budget, jobs, ops, serve, teams, usage
from ledger.errors import TokensError, Unreachable

app = typer.Typer(
    name="tokens",
    help="Meter and bill the tokens spent on AI generation and lead enrichment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(ops.migrate)
teams.team_app.command("member-cap", context_settings={"ignore_unknown_options": True})(
    budget.member_cap
)
app.add_typer(teams.team_app, name="team")
app.command("teams")(teams.teams)
app.command()(usage.charge)
app.command()(usage.billing)
app.command()(usage.history)
app.command()(budget.quote)
app.command()(alerts.alerts)
app.command()(jobs.enqueue)
app.command()(jobs.worker)
app.command()(bills.reconcile)
app.command("bills")(bills.bills)
app.add_typer(bills.bill_app, name="bill")
app.command()(serve.serve)
app.command()(jobs.demo)
app.command()(ops.check)
app.command()(ops.stop)
app.command()(ops.servers)


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
