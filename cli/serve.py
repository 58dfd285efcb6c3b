"""`tokens serve`: the HTTP API (README "The HTTP API and the billing page") under uvicorn.

FastAPI and uvicorn are imported inside the command: the other commands
never pay for them at start-up.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI

API_POOL_SIZE = 20  # each process's Postgres pool (api/app.py)

_UVICORN: dict[str, Any] = {
    "access_log": False,  # requests are counted in /metrics; errors are logged
    "proxy_headers": True,  # behind a TLS proxy: https, so the page's cookie is Secure
    "server_header": False,
    "timeout_graceful_shutdown": 30,
}


def worker_processes(value: str) -> int:
    """`--workers`: a whole number >= 1, or `auto` for the CPUs this process may run on
    (its affinity mask, which a container's cpuset narrows; a CPU quota does not)."""
    if value.strip().lower() == "auto":
        if hasattr(os, "sched_getaffinity"):  # Linux
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise typer.BadParameter(
            f"{value!r} is not a number of processes: give 1 or more, or auto",
            param_hint="'--workers'",
        )
    return n


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="Port to listen on.", min=0, max=65535)
    ] = 8000,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            metavar="N|auto",
            help=(
                "Server processes sharing the port (auto: one per CPU). Each opens its own "
                f"pools: up to N x {API_POOL_SIZE} Postgres connections. 1 serves in this process."
            ),
        ),
    ] = "1",
) -> None:
    """Serve the HTTP API (JWT-authenticated /v1, Stripe webhooks, the billing page)."""
    processes = worker_processes(workers)
    from cli.common import settings_for

    settings = settings_for(service=True)
    from api.app import app_secret, create_app

    app_secret(settings)  # refused here, in one line, rather than at the first request
    import uvicorn

    if processes > 1:
        _serve_processes(host, port, processes)
        return
    uvicorn.run(create_app(settings), host=host, port=port, **_UVICORN)


def worker_app() -> FastAPI:
    """The app of one worker process of `--workers N`: a fresh interpreter (uvicorn
    spawns them), so it reads the same environment and sets up logging again."""
    from cli.common import settings_for

    settings = settings_for(service=True)
    from api.app import create_app

    return create_app(settings)


def _serve_processes(host: str, port: int, processes: int) -> None:
    """uvicorn's supervisor: it binds the port once, starts `processes` workers on it,
    replaces one that dies, and on SIGINT or SIGTERM stops them all (each shuts down
    gracefully) before it exits. Each worker runs the embedded-server supervisor too;
    the data dir's lock makes them start one server between them."""
    import tempfile

    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "cli.serve:worker_app", factory=True, host=host, port=port, workers=processes, **_UVICORN
    )
    with tempfile.TemporaryDirectory(prefix="tokens-serve-metrics-") as metrics_dir:
        # prometheus-client's multiprocess mode: each worker counts in files here and
        # /metrics adds up all of them, so a scrape answered by any one process sees
        # every process's requests (the workers inherit the environment).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    # A worker that could not start (Postgres unreachable, say) made the supervisor
    # give up: exit as the single process does then, not 0.
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)
