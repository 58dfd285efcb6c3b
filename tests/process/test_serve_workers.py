"""`tokens serve --workers N`: N server processes on one port, stopped together."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from cli.serve import worker_processes
from runtime.embedded.processes import process_alive
from tests.api_helpers import token
from tests.api_live import running_api
from tests.process import Tokens, clean_env

pytestmark = pytest.mark.process


def worker_pids(parent: int) -> list[int]:
    """The uvicorn workers `parent` spawned (multiprocessing's resource tracker, also
    its child, is not one)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # exited while we looked
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)


async def started_apps(log: Path, want: int, within_s: float = 60) -> int:
    """How many processes have opened their pools and started the app, once `want`
    have (or the time is up)."""
    deadline = time.monotonic() + within_s
    while True:
        n = (await asyncio.to_thread(log.read_text)).count('"api_started"')
        if n >= want or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.1)


def billing_requests(metrics: str) -> float:
    """GET billing requests answered 200, from a Prometheus text page."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("tokens_http_request_seconds_count{")
        and 'route="/v1/teams/{team}/billing"' in line
        and 'method="GET"' in line
        and 'status="200"' in line
    )


async def test_two_workers_serve_billing_and_stop_with_their_parent(
    server_dsn: str, template_db: str, redis_url: str
) -> None:
    async with running_api(
        server_dsn, template_db, redis_url, "--workers", "2", TOKENS_LOG_LEVEL="INFO"
    ) as live:
        workers = worker_pids(live.process.pid)
        assert len(workers) == 2, workers
        # Each worker process ran the app's start-up: its own pool, Redis and Stripe client.
        assert await started_apps(live.log, 2) == 2, live.server_log()
        headers = {"Authorization": f"Bearer {token('member', 'acme')}"}
        for _ in range(8):  # a new connection each: any worker may accept it
            async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as c:
                assert (await c.get("/healthz")).status_code == 200
                billing = await c.get("/v1/teams/acme/billing", headers=headers)
            assert billing.status_code == 200, billing.text
            assert (billing.json()["free_spent"], billing.json()["additional_spent"]) == (500, 110)
        # Whichever process answers the scrape, it counts the requests of both.
        for _ in range(4):
            async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as c:
                assert billing_requests((await c.get("/metrics")).text) == 8

        live.process.terminate()
        assert await asyncio.to_thread(live.process.wait, 60) == 0
        # The parent waited for both workers, each shut down cleanly (closing its pools).
        assert not [pid for pid in workers if process_alive(pid)]
        assert live.server_log().count("Application shutdown complete") == 2, live.server_log()


def test_workers_is_a_number_of_processes_or_auto() -> None:
    assert worker_processes("3") == 3
    assert worker_processes("auto") == len(os.sched_getaffinity(0))
    tokens = Tokens(clean_env())
    for bad in ("0", "-2", "two"):
        tokens.refused("serve", "--workers", bad, code=2, says="give 1 or more, or auto")
