"""Bring back the embedded servers a long-running process depends on.

`tokens serve` and `tokens worker` outlive the servers they started with: a
crash, an OOM kill or a reboot of one server would leave them answering 503
until some other command started it again. Their connections retry the same
address (the socket dir, the previous port), so starting the server again is
all that recovery takes. A server stopped by `tokens stop` stays stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import structlog

from runtime.config import Settings
from runtime.embedded import EmbeddedServerError, revive, servers_down

log = structlog.get_logger("tokens.embedded")

CHECK_INTERVAL_S = 1.0


async def supervise(settings: Settings, *, interval_s: float = CHECK_INTERVAL_S) -> None:
    """Every `interval_s`, start again the embedded servers of `settings` that died.

    Runs until cancelled; only the servers this process uses embedded (its URL
    unset) are watched. A start that fails is logged and tried again next time.
    """
    postgres, redis = settings.database_url is None, settings.redis_url is None
    if not (postgres or redis):
        return
    while True:
        await asyncio.sleep(interval_s)
        down = servers_down(settings.data_dir, postgres=postgres, redis=redis)
        if not down:
            continue
        try:
            started = await asyncio.to_thread(revive, settings.data_dir, down)
        except (EmbeddedServerError, OSError) as exc:
            log.warning("embedded_server_revive_failed", servers=down, error=str(exc)[:500])
            continue
        if started:
            log.warning("embedded_server_revived", servers=started)


@asynccontextmanager
async def supervised(settings: Settings) -> AsyncIterator[None]:
    """Run `supervise` beside the body; stop it when the body ends."""
    task = asyncio.create_task(supervise(settings), name="embedded-supervisor")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
