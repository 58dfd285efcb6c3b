"""`tokens serve` and `tokens worker` on embedded servers outlive a server that dies.

The real processes: the servers are killed by the pids their own files name,
and the API and the worker must bring them back without any other command.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from runtime.embedded import revive, servers_down, stop_redis, stop_servers
from tests.api_helpers import SECRET, token
from tests.api_live import free_port, wait_ready
from tests.process import Tokens, clean_env

pytestmark = pytest.mark.process

TEAM = "recovers"


@dataclass
class Running:
    base_url: str
    data_dir: Path
    tokens: Tokens
    logs: list[Path]

    def logs_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs)


def _new_data_dir() -> Path:
    # Not under a private home folder: the embedded Postgres runs as another user.
    path = Path(tempfile.mkdtemp(prefix="tokens-recover-", dir="/tmp"))
    path.chmod(0o755)
    return path / "data"


@pytest.fixture(scope="module")
async def running() -> AsyncIterator[Running]:
    """`tokens serve` and `tokens worker` on the embedded servers of a fresh data dir."""
    data_dir = _new_data_dir()
    tokens = Tokens(
        clean_env(
            TOKENS_DATA_DIR=str(data_dir), TOKENS_APP_SECRET=SECRET, TOKENS_LOG_LEVEL="WARNING"
        )
    )
    port = free_port()
    procs: list[subprocess.Popen[str]] = []
    logs: list[Path] = []
    for name, args in (("serve", ("serve", "--port", str(port))), ("worker", ("worker",))):
        log = data_dir.parent / f"{name}.log"
        with log.open("w") as out:
            procs.append(tokens.popen(*args, stdout=out, stderr=subprocess.STDOUT))
        logs.append(log)
    live = Running(f"http://127.0.0.1:{port}", data_dir, tokens, logs)
    try:
        await asyncio.to_thread(
            tokens.ok,
            *("team", "set", TEAM, "--plan", "email_outreach", "--seats", "1"),
            *("--interval", "month", "--anchor", "2026-01-01T00:00:00Z"),
        )
        await wait_ready(live.base_url, procs[0])
        yield live
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
        tokens("stop")


def _postgres_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])


def _redis_pid(data_dir: Path) -> int:
    return int(json.loads((data_dir / "redis.json").read_text())["pid"])


async def _until(
    what: str, check: Callable[[], object], live: Running, within_s: float = 60
) -> None:
    """Poll `check` until it holds (readiness, not a fixed sleep)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} within {within_s} s\n{live.logs_text()}")


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


async def _a_job_runs(live: Running) -> None:
    headers = {"Authorization": f"Bearer {token('member', TEAM)}"}
    async with httpx.AsyncClient(base_url=live.base_url, headers=headers, timeout=10) as c:
        queued = await c.post(f"/v1/teams/{TEAM}/jobs", json={"action": "ai_sequence"})
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["jobs"][0]["job_id"]
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            answer = await c.get(f"/v1/jobs/{job_id}")
            status = answer.json().get("status")
            if status not in ("queued", "running", None):
                break
            await asyncio.sleep(0.2)
    assert status == "captured", f"job {job_id}: {status}\n{live.logs_text()}"


@pytest.mark.parametrize("server", ["postgres", "redis"])
async def test_a_killed_embedded_server_comes_back_by_itself(running: Running, server: str) -> None:
    pid_of = _postgres_pid if server == "postgres" else _redis_pid
    killed = pid_of(running.data_dir)
    os.kill(killed, signal.SIGKILL)

    def replaced() -> bool:
        try:
            return pid_of(running.data_dir) != killed and not servers_down(
                running.data_dir, postgres=True, redis=True
            )
        except (OSError, ValueError, KeyError, IndexError):
            return False  # its file is being rewritten

    await _until(f"{server} started again", replaced, running)
    await _until("/healthz 200", lambda: _healthy(running.base_url), running)
    await _a_job_runs(running)


def test_a_server_stopped_on_purpose_stays_stopped() -> None:
    """`tokens stop` is obeyed by the supervisors; a command that starts one lifts it."""
    data_dir = _new_data_dir()
    tokens = Tokens(clean_env(TOKENS_DATA_DIR=str(data_dir)))
    tokens("check")  # starts both servers (the schema is not migrated: it says so)
    try:
        assert servers_down(data_dir, postgres=True, redis=True) == []
        stop_redis(data_dir, kill=True)  # a crash: brought back
        assert servers_down(data_dir, postgres=True, redis=True) == ["redis"]
        assert revive(data_dir, ["redis"]) == ["redis"]
        assert servers_down(data_dir, postgres=True, redis=True) == []
        stop_servers(data_dir)  # on purpose: left stopped
        assert servers_down(data_dir, postgres=True, redis=True) == ["postgres", "redis"]
        assert revive(data_dir, ["postgres", "redis"]) == []
        tokens("check")  # a command starts them: supervised again
        stop_redis(data_dir, kill=True)
        assert revive(data_dir, ["redis"]) == ["redis"]
    finally:
        stop_servers(data_dir)
