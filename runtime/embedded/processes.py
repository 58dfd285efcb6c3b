"""What both embedded servers need: one lock per data dir, process checks, log tails."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

log = structlog.get_logger()

DATABASE_NAME = "tokens"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

_LOCK_FILE = ".servers.lock"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started, reached or stopped."""


def absolute(path: Path) -> Path:
    # Other processes (and postgres running as another user) must find the
    # same place whatever their working directory.
    return path.expanduser().resolve()


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    # flock, not lockf: flock locks belong to the open file, so two threads of
    # one process exclude each other too.
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def process_alive(pid: int, name: str | None = None) -> bool:
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


def wait_until_dead(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return not process_alive(pid)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
