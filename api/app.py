"""The ASGI app: its routes (one module per concern) and its services' lifetime.

`create_app(settings)` opens its own pool, Redis and Stripe client on start-up
(through wiring/) and closes them on shutdown; tests (and the benchmark) hand in
ready ones.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response

from api import errors
from api.schemas import HealthOut
from api.services import Services, services
from runtime.config import Settings

log = structlog.get_logger("tokens.api")


def app_secret(settings: Settings) -> str:
    """TOKENS_APP_SECRET, required: without it no request could be authenticated."""
    secret = settings.app_secret or ""
    if not secret:
        from ledger.errors import BadInput

        raise BadInput("TOKENS_APP_SECRET is not set: the API cannot verify any token")
    if len(secret.encode()) < 32:
        log.warning("app_secret_short", bytes=len(secret.encode()), advice="use 32 bytes or more")
    return secret


@asynccontextmanager
async def _open(settings: Settings) -> AsyncIterator[Services]:
    from billing.stripe_client import make_stripe_client
    from runtime.embedded.supervise import supervised
    from wiring.pools import open_ledger, open_queue

    secret = app_secret(settings)
    async with (
        supervised(settings),
        open_ledger(settings, max_size=20) as ledger,
        open_queue(settings) as redis,
    ):
        hook = settings.stripe_webhook_secret
        yield Services(
            settings=settings,
            ledger=ledger,
            redis=redis,
            stripe=make_stripe_client(settings),
            app_secret=secret,
            webhook_secret=hook.get_secret_value() if hook else None,
        )


def create_app(settings: Settings, ready: Services | None = None) -> FastAPI:
    """The HTTP API. `ready`: services built by the caller (then left open at shutdown)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ready is not None:
            app.state.services = ready
            yield
            return
        async with _open(settings) as built:
            app.state.services = built
            log.info("api_started")
            yield

    app = FastAPI(
        title="Tokens",
        version="1",
        summary="Meters and bills the tokens spent on AI generation and lead enrichment.",
        description=(
            "Every /v1 request but the Stripe webhook carries `Authorization: Bearer <JWT>`, "
            "signed HS256 with TOKENS_APP_SECRET; claims `sub`, `team`, `role` "
            "(member, admin, service) and `exp`. Errors are "
            '`{"error": {"code": "...", "message": "..."}}`.'
        ),
        lifespan=lifespan,
    )
    if ready is not None:
        app.state.services = ready  # ASGI transports in tests do not run the lifespan
    errors.install(app)
    _mount(app)
    return app


def _mount(app: FastAPI) -> None:
    from api import bills, budget, jobs, page, teams, webhooks
    from api.limits import BodyLimit
    from api.metrics import RequestMetrics

    # Before teams: its PUT /v1/teams/{team:path} would take .../members/{member}/cap.
    app.include_router(budget.router)
    app.include_router(teams.router)
    app.include_router(jobs.router)
    app.include_router(bills.router)
    app.include_router(webhooks.router)
    app.include_router(page.router)
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestMetrics)  # outermost: 401s and 413s are observed too

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus metrics (the HTTP histogram and the ledger's own): of this process,
        or of every worker process of `tokens serve --workers N`."""
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        registry = REGISTRY
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["operations"], responses={503: {"model": HealthOut}})
    async def healthz(request: Request, response: Response) -> HealthOut:
        """Postgres and Redis answer: 200; otherwise 503 naming which one does not."""
        svc = services(request)
        checks = {"postgres": "ok", "redis": "ok"}
        try:
            await svc.ledger.pool.fetchval("SELECT 1", timeout=2)
        except Exception as exc:  # any failure is the answer, not a crash
            checks["postgres"] = f"unreachable: {type(exc).__name__}"
        try:
            await svc.redis.ping()
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        response.status_code = 200 if ok else 503
        return HealthOut(status="ok" if ok else "unavailable", **checks)
