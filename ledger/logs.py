"""A structlog logger for the hot path: assembled once per logging configuration.

`structlog.get_logger(name)` returns a lazy proxy that assembles a new bound
logger (wrapper, context, output logger) on every call, unless structlog is
configured to cache it on first use, which would keep a stale logger across a
later `structlog.configure` (tests, the benchmarks' quiet logs). This keeps
the assembled logger and assembles it again only when the configuration
changed: one dict and three identity checks per call instead.
"""

from __future__ import annotations

from typing import Any

import structlog


class CachedLogger:
    __slots__ = ("_factory", "_logger", "_name", "_processors", "_wrapper")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None
        self._processors: Any = None
        self._wrapper: Any = None
        self._factory: Any = None

    def _bound(self) -> Any:
        # Three identity checks, no tuple or generator: this runs twice per charge.
        config = structlog.get_config()
        if (
            self._logger is None
            or config["processors"] is not self._processors
            or config["wrapper_class"] is not self._wrapper
            or config["logger_factory"] is not self._factory
        ):
            self._logger = structlog.get_logger(self._name).bind()
            self._processors = config["processors"]
            self._wrapper = config["wrapper_class"]
            self._factory = config["logger_factory"]
        return self._logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bound(), name)


def cached_logger(name: str) -> Any:
    """Like `structlog.get_logger(name)`, for modules that log once per charge."""
    return CachedLogger(name)
