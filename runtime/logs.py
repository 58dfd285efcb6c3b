"""structlog set-up: human lines on a terminal, JSON lines otherwise."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is now (test captures replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _dumps(obj: Any, default: Callable[[Any], Any] | None = None, **_: Any) -> str:
    """JSON for structlog's renderer by orjson: with json.dumps the encoding is a
    large part of a log line's cost, and the worker writes two lines per metered
    job (docs/decisions.md, "The worker").
    Datetimes come out as ISO 8601; what orjson cannot encode goes through
    structlog's fallback (`__structlog__`, else repr), as with json.dumps. What
    orjson refuses outright (an integer beyond 64 bits) goes to json.dumps: a log
    call must not raise."""
    try:
        return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(obj, default=default)


def configure_logging(fmt: str = "auto", level: str = "INFO") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        # Imported only here: structlog.dev pulls in rich's tracebacks, which every
        # command would otherwise load at start-up.
        from structlog.dev import ConsoleRenderer

        renderer = ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
