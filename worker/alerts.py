"""Usage alerts to the application's webhook: the worker's outbox sender.

The `alerts` table is the outbox: the ledger's trigger writes an alert in the
transaction of the charge that crossed the level, and the worker's cron job
`deliver_alerts` POSTs the ones not yet delivered to TOKENS_ALERT_WEBHOOK_URL.

- One alert at a time, under its row lock (`FOR UPDATE SKIP LOCKED`), held
  for the whole POST: two workers never send the same alert at once, and a
  worker that dies mid-send leaves it to the next run.
- A 2xx answer marks it delivered (`delivered_at`) in the same transaction;
  a delivered alert is never selected, so never sent again.
- Anything else (a non-2xx status, a refused connection, a timeout) keeps it,
  with `attempts`, `last_error` and a next try after exponential backoff
  (TOKENS_ALERT_RETRY_BASE_SECONDS doubling, capped at
  TOKENS_ALERT_RETRY_MAX_SECONDS). Alerts never expire: a receiver down for
  an hour gets every one of them once it answers again.
- A run stops at its first failure (the receiver is most likely down: no use
  waiting for a timeout per alert) and after RUN_BUDGET_S of sending.

Delivery is at least once: if the process dies after the receiver answered
2xx but before the commit, that alert is sent again. Receivers deduplicate on
`alert_id` (a UUID, unique across databases).

The signature (`Tokens-Signature`) follows Stripe's scheme:
`t=UNIX_SECONDS,v1=HEX`, HEX = HMAC-SHA256 keyed with TOKENS_APP_SECRET over
`UNIX_SECONDS` + "." + the raw body. Each attempt is signed afresh, so a
receiver may refuse old timestamps (replays). README "Usage alerts" has the
receiver's check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import structlog

from ledger.alerts import AlertRow
from worker.context import JobContext

log = structlog.get_logger("tokens.alerts")

SIGNATURE_HEADER = "Tokens-Signature"
RUN_BUDGET_S = 60.0  # well inside the job timeout: a run never dies mid-send

_NEXT_DUE = """
SELECT * FROM alerts
WHERE delivered_at IS NULL AND next_attempt_at <= $1
ORDER BY next_attempt_at, id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""
_DELIVERED = """
UPDATE alerts SET delivered_at = $2, attempts = attempts + 1, last_error = NULL
WHERE id = $1
"""
_FAILED = """
UPDATE alerts SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3
WHERE id = $1
"""


def body_of(alert: AlertRow) -> bytes:
    """The JSON POSTed for one alert (README "Usage alerts"), compact and in a fixed order."""
    return json.dumps(alert.payload(), separators=(",", ":"), sort_keys=True).encode()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The `Tokens-Signature` header value for a raw body."""
    signed = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def backoff(attempts: int, base: float, cap: float) -> timedelta:
    """Delay before the next try after `attempts` failed ones (1, 2, ...)."""
    return timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), cap))


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": len(self.delivered),
            "failed": len(self.failed),
            "error": self.error,
        }


@dataclass
class AlertSender:
    """Sends due alerts to one webhook URL; the clock is the caller's (tests move it)."""

    pool: asyncpg.Pool
    client: httpx.AsyncClient
    url: str
    secret: str
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 300.0
    unix_time: Callable[[], float] = time.time

    async def _post(self, alert: AlertRow) -> str | None:
        """POST one alert; None when the receiver took it (2xx), else why not."""
        body = body_of(alert)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, self.secret, int(self.unix_time())),
            "User-Agent": "tokens-alerts",
        }
        try:
            response = await self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def deliver_due(self, now: datetime, *, max_alerts: int = 500) -> DeliveryReport:
        """Send the alerts due at `now`, oldest first, until one fails or none is left."""
        report = DeliveryReport()
        deadline = time.monotonic() + RUN_BUDGET_S
        while len(report.delivered) < max_alerts and time.monotonic() < deadline:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(_NEXT_DUE, now)
                if row is None:
                    break
                alert = AlertRow.from_record(row)
                error = await self._post(alert)
                if error is None:
                    await conn.execute(_DELIVERED, alert.id, now)
                else:
                    retry_at = now + backoff(
                        alert.attempts + 1, self.retry_base_seconds, self.retry_max_seconds
                    )
                    await conn.execute(_FAILED, alert.id, error[:500], retry_at)
            if error is None:
                report.delivered.append(alert.alert_id)
                log.info(
                    "alert_delivered",
                    alert_id=alert.alert_id,
                    team=alert.team_id,
                    kind=alert.kind,
                    level=alert.level,
                    attempts=alert.attempts + 1,
                )
            else:
                report.failed.append(alert.alert_id)
                log.warning(
                    "alert_delivery_failed",
                    alert_id=alert.alert_id,
                    team=alert.team_id,
                    error=error,
                    attempts=alert.attempts + 1,
                    retry_at=retry_at.isoformat(),
                )
                break
        return report


async def deliver_alerts(ctx: JobContext) -> dict[str, Any]:
    """arq cron job: send the due alerts when TOKENS_ALERT_WEBHOOK_URL is set."""
    deps = ctx["deps"]
    settings = deps["settings"]
    if not settings.alert_webhook_url:
        return DeliveryReport().as_dict()
    if not settings.app_secret:
        report = DeliveryReport(
            error="TOKENS_ALERT_WEBHOOK_URL is set but TOKENS_APP_SECRET is not: "
            "alerts are kept, unsent, until it is"
        )
        log.error("alert_delivery_unsigned", error=report.error)
        return report.as_dict()
    async with httpx.AsyncClient(timeout=settings.alert_timeout_seconds) as client:
        sender = AlertSender(
            pool=deps["ledger"].pool,
            client=client,
            url=settings.alert_webhook_url,
            secret=settings.app_secret,
            retry_base_seconds=settings.alert_retry_base_seconds,
            retry_max_seconds=settings.alert_retry_max_seconds,
        )
        # The real clock, not the ledger's (the demo simulates a month): retries are
        # spaced in the receiver's time, and `next_attempt_at` defaults to the database's.
        report = await sender.deliver_due(datetime.now(UTC))
    return report.as_dict()
