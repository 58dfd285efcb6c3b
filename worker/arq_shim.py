"""Where the worker reaches past arq's documented API: only here, for one arq version.

- `TokensWorker` overrides `Worker.start_jobs`, `run_job` and `heart_beat`, and uses
  what they use: `job_counter`, `max_jobs`, `sem`, `tasks`, `on_job_start`.
- The jobs take a typed `JobContext` where arq's protocols say `dict`: `job` and
  `cron_job` hand them to arq.
- redis-py keeps no public list of a pool's connections: `pooled_connections`.

A new arq may change any of these without notice: the version is checked at import
(update `ARQ_VERSION` only after checking each of them against the new arq), and
tests fail when a signature or an attribute this module relies on changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, cast

import structlog
from arq.connections import ArqRedis
from arq.cron import CronJob, cron
from arq.typing import WorkerCoroutine
from arq.version import VERSION
from arq.worker import Function, Worker, func

from runtime.transient import is_transient
from worker.context import JobContext
from worker.start_groups import Member, StartGroup

ARQ_VERSION = "0.28.0"
if VERSION != ARQ_VERSION:
    raise ImportError(
        f"worker/arq_shim.py is written for arq {ARQ_VERSION}, but arq {VERSION} is "
        "installed: install the version of uv.lock (`uv sync --frozen`), or check the "
        "shim against the new arq and update ARQ_VERSION"
    )

# arq's methods TokensWorker overrides, as `inspect.signature` shows them in ARQ_VERSION.
OVERRIDDEN = {
    "start_jobs": "(self, job_ids: list[bytes]) -> None",
    "run_job": "(self, job_id: str, score: int) -> None",
    "heart_beat": "(self) -> None",
}
# arq's worker attributes those overrides read or change.
WORKER_ATTRIBUTES = ("job_counter", "max_jobs", "sem", "tasks", "on_job_start")
# redis-py's pool attributes `pooled_connections` reads.
POOL_ATTRIBUTES = ("_available_connections", "_in_use_connections")

log = structlog.get_logger("tokens.worker")

JobFunction = Callable[Concatenate[JobContext, ...], Awaitable[Any]]


def job(f: JobFunction, **options: Any) -> Function:
    """An arq function of a job (`arq.worker.func`), named after it unless `name` is given."""
    options.setdefault("name", f.__name__)
    return func(cast(WorkerCoroutine, f), **options)


def cron_job(f: JobFunction, **options: Any) -> CronJob:
    """An arq cron job (`arq.cron.cron`)."""
    return cron(cast(WorkerCoroutine, f), **options)


def pooled_connections(redis: ArqRedis) -> list[Any]:
    """Every connection of the client's pool, idle or in use."""
    pool = redis.connection_pool
    return [*pool._available_connections, *pool._in_use_connections]


class TokensWorker(Worker):
    """arq's worker, which must not die of a Redis restart.

    A command inside WATCH ... EXEC that loses its connection raises WatchError
    (redis-py cannot retry a transaction whose WATCH is gone). arq takes a job
    under WATCH, and enqueues its cron jobs under WATCH, and does not expect
    that error there: the worker's poll loop ended, the process exited. Here
    such an outage skips this poll (the next one tries again) and gives back
    the job slot it had taken.
    """

    # At most this many jobs taken in a row wait for each other (worker/start_groups.py).
    start_group = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._members: dict[str, Member] = {}  # taken, not yet running
        self._running: dict[str, Member] = {}
        on_job_start = self.on_job_start

        async def meet_then_start(ctx: dict[str, Any]) -> None:
            member = self._running.get(ctx["job_id"])
            if member is not None:
                await member.meet()
            if on_job_start is not None:
                await on_job_start(ctx)

        self.on_job_start = meet_then_start

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's, one job at a time (each its own WATCH), with two changes.

        Outages: see the class. Start together: the jobs taken by one poll
        start together, up to `start_group` at a time (worker/start_groups.py):
        once they are all taken, and their functions once they have all read
        their jobs. Their holds and captures then meet in the same ledger
        batch: fewer round trips per job (bench/arq_overhead.py). Nothing
        else changes: a job is taken exactly as arq takes it, and runs
        exactly as arq runs it.
        """
        group = StartGroup()
        try:
            for job_id in job_ids:
                if self.job_counter >= self.max_jobs:
                    return  # arq's own check, before it takes anything: no slot left
                if group.size >= self.start_group:
                    group.close()
                    group = StartGroup()
                name = job_id.decode()
                member = self._members[name] = group.join()
                before = self.tasks.get(name)  # arq adds each job it starts to self.tasks
                try:
                    await super().start_jobs([job_id])
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    # It failed after taking a slot and before starting the job (the
                    # only place it can): give the slot back, try again next poll.
                    self.job_counter -= 1
                    self.sem.release()
                    log.warning("worker_redis_outage", where="start_jobs", error=repr(exc)[:200])
                    return
                finally:
                    if self.tasks.get(name) is before:  # not started (taken elsewhere, ...)
                        self._members.pop(name, None)
                        member.arrived()
        finally:
            group.close()

    async def run_job(self, job_id: str, score: int) -> None:
        member = self._members.pop(job_id, None)
        if member is None:
            await super().run_job(job_id, score)
            return
        await member.group.taken()
        self._running[job_id] = member
        try:
            await super().run_job(job_id, score)
        finally:
            if self._running.get(job_id) is member:  # not a later run of the same job
                del self._running[job_id]
            member.arrived()  # ended before its start (expired, out of tries, ...)

    async def heart_beat(self) -> None:
        try:
            await super().heart_beat()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("worker_redis_outage", where="heart_beat", error=repr(exc)[:200])
