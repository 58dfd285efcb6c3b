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
    __slots__ = ("_config", "_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None
        self._config: tuple[Any, ...] = ()

    def _bound(self) -> Any:
        config = structlog.get_config()
        key = (config["processors"], config["wrapper_class"], config["logger_factory"])
        if self._logger is None or any(a is not b for a, b in zip(key, self._config, strict=True)):
            self._logger = structlog.get_logger(self._name).bind()
            self._config = key
        return self._logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bound(), name)


def cached_logger(name: str) -> Any:
    """Like `structlog.get_logger(name)`, for modules that log once per charge."""
    return CachedLogger(name)
