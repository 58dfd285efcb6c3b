"""Prometheus metrics, served by the worker on TOKENS_METRICS_PORT."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)


class Children(Generic[M]):
    """A labelled metric's children, looked up once per label values.

    `metric.labels(...)` validates and joins its label values under a lock on
    every call; the money path counts three or four events per job, so it keeps
    the children it has met (the same objects `labels` returns).
    """

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


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

VENDOR_ANSWERS = Counter(
    "tokens_vendor_answers_total", "Enrichment/verification vendor answers", ["vendor", "kind"]
)  # kind: searched, wait, never, ours
VENDOR_PAUSES = Counter(
    "tokens_vendor_pauses_total",
    "Vendors paused because they refused our key or our credits ran out",
    ["vendor"],
)

tokens_counter = Children(TOKENS)
jobs_counter = Children(JOBS)
