"""What every job gets in arq's `ctx`: typed, built once in `on_startup`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypedDict

import httpx

from ledger.service import Ledger
from runtime.config import Settings
from worker.providers import Providers

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from billing.sender import StripeSender


class Deps(TypedDict):
    settings: Settings
    ledger: Ledger
    providers: Providers
    http: httpx.AsyncClient
    clock: Callable[[], datetime]
    sender: StripeSender | None


class JobContext(TypedDict):
    """arq's ctx as a job gets it: our `deps` (set in `on_startup`), plus what arq adds
    for each job. arq's own types say `dict`: worker/arq_shim.py hands the jobs to arq."""

    deps: Deps
    redis: ArqRedis
    job_id: str
    job_try: int
    enqueue_time: datetime
    score: int
