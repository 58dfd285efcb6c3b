"""Prometheus metrics, served by the worker on TOKENS_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TOKENS = Counter(
    "tokens_tokens_total", "Tokens by what happened to them", ["action", "event"]
)  # event: held, captured, released, refused
JOBS = Counter("tokens_jobs_total", "Metered jobs by outcome", ["action", "status"])
BILLS = Counter("tokens_bills_total", "Bills by event", ["event"])  # created, sent, failed
RECONCILE_SECONDS = Histogram("tokens_reconcile_seconds", "Duration of one reconcile run")
OUTAGES = Counter(
    "tokens_outage_retries_total",
    "Ledger calls that met an unreachable Postgres/Redis",
    ["what", "event"],
)  # what: hold, capture, release, sweep, reconcile; event: waited (in the job), deferred (requeued)
