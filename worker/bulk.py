"""Queue many arq jobs in a few round trips.

`ArqRedis.enqueue_job` costs a round trip per job (WATCH, EXISTS, then
MULTI/PSETEX/ZADD/EXEC): 10,000 leads would be 10,000 sequential exchanges.
Here each batch is one Lua script that does, per job, exactly what
`enqueue_job` does (arq 0.28, arq/connections.py): skip the job when its job
key or result key exists, else write the pickled job under `arq:job:<id>` with
arq's expiry and add the id to the queue's sorted set, scored by its enqueue
time. A script runs atomically, so a job id is queued at most once even
against a concurrent `enqueue_job` with the same id; the batches go out
concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

BATCH = 1_000

# KEYS: queue, then (job key, result key) per job. ARGV: expiry ms, score, then
# (serialized job, job id) per job. Returns 1 per job queued, 0 per job that existed.
_ENQUEUE = """
local queue = KEYS[1]
local px = ARGV[1]
local score = ARGV[2]
local out = {}
local add = {}
for i = 1, (#KEYS - 1) / 2 do
    local job_key = KEYS[2 * i]
    if redis.call('EXISTS', job_key, KEYS[2 * i + 1]) == 0 then
        redis.call('PSETEX', job_key, px, ARGV[2 * i + 1])
        add[#add + 1] = score
        add[#add + 1] = ARGV[2 * i + 2]
        out[i] = 1
    else
        out[i] = 0
    end
end
if #add > 0 then
    redis.call('ZADD', queue, unpack(add))
end
return out
"""


@dataclass(frozen=True)
class JobSpec:
    function: str
    job_id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


async def enqueue_many(
    redis: ArqRedis, jobs: Sequence[JobSpec], *, queue: str, batch: int = BATCH
) -> list[bool]:
    """Queue `jobs` as arq jobs; per job, True when it was queued, False when a job
    (or the result of one) with its id already existed."""
    if not jobs:
        return []
    script = redis.register_script(_ENQUEUE)
    now = timestamp_ms()
    expires_ms = redis.expires_extra_ms
    serializer = redis.job_serializer

    async def send(chunk: Sequence[JobSpec]) -> list[int]:
        keys: list[str] = [queue]
        args: list[Any] = [expires_ms, now]
        for job in chunk:
            keys += (job_key_prefix + job.job_id, result_key_prefix + job.job_id)
            args += (
                serialize_job(job.function, job.args, job.kwargs, None, now, serializer=serializer),
                job.job_id,
            )
        reply: list[int] = await script(keys=keys, args=args)
        return reply

    # Batches go out concurrently, each on its own connection: while the server runs
    # one batch's script, the next is being encoded.
    replies = await asyncio.gather(
        *(send(jobs[start : start + batch]) for start in range(0, len(jobs), batch))
    )
    return [bool(flag) for reply in replies for flag in reply]
