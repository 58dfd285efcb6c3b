"""`tokens serve`: the HTTP API (README, "The HTTP API and the billing page") under uvicorn.

FastAPI and uvicorn are imported inside the command: the other commands
never pay for them at start-up.
"""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="Port to listen on.", min=0, max=65535)
    ] = 8000,
) -> None:
    """Serve the HTTP API (JWT-authenticated /v1, Stripe webhooks, the billing page)."""
    from cli.common import settings_for

    settings = settings_for(service=True)
    from api.app import app_secret, create_app

    app_secret(settings)  # refused here, in one line, rather than at the first request
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        access_log=False,  # requests are counted in /metrics; errors are logged
        proxy_headers=True,  # behind a TLS proxy: https, so the page's cookie is Secure
        server_header=False,
        timeout_graceful_shutdown=30,
    )
