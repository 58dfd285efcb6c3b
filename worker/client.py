"""The application's side: enqueue metered jobs, read their results.

One job per lead for `enrich` and `debounce` (each charging one lead, keyed by
job id + lead), one job per generation for the AI actions. Job ids are the
caller's to choose (a retry of the same enqueue is then a no-op); by default
they are fresh.

A caller's job id belongs to its team: the queue's id is `<team>~<job id>`
(then `:<lead>` or `:<n>`), so two teams may send the same id and get two
jobs, and the id a caller is given back names one job of one team. `~` is in
neither a team id nor a caller's job id, so no two (team, id) pairs meet.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job

from ledger.catalog import Catalog
from ledger.errors import BadInput, JobIdReused
from ledger.validate import MAX_KEY, team_id
from ledger.validate import member as check_member
from ledger.validate import quantity as check_quantity
from worker.bulk import JobSpec, enqueue_many
from worker.metering import charge_key
from worker.payloads import (
    DebounceLeadList,
    IcebreakerPayload,
    LeadList,
    SequencePayload,
    parse,
)
from worker.queue import QUEUE

LEAD_ACTIONS = ("enrich", "debounce")
# A caller's job id, without ':' so that no request's id is another's job
# (`b` with leads is `b:<lead>`; were `b:x` allowed, it would name b's lead x).
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@/+-]{0,149}")
TEAM_SEPARATOR = "~"
DEFAULT_PROMPT = "A three-step cold outreach sequence for our product."


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    action: str
    lead_id: str | None
    queued: bool  # False when a job with this id already existed (nothing new queued)


def plan_jobs(
    catalog: Catalog,
    team: str,
    action: str,
    *,
    quantity: int | None,
    payload: dict[str, Any] | None,
    job_id: str | None = None,
) -> list[tuple[str, tuple[Any, ...], str | None]]:
    """Validate and split an enqueue request into (job id, args, lead id), before
    anything is queued: a bad request queues nothing."""
    team_id(team)
    catalog.action(action)
    if job_id is not None and not _JOB_ID.fullmatch(job_id):
        raise BadInput(
            f"job_id {job_id[:60]!r} must be 1-150 letters, digits and _.@/+- (starting with a "
            "letter or digit); not ':', which joins a job id to its lead or generation"
        )
    base = f"{team}{TEAM_SEPARATOR}{job_id or uuid.uuid4().hex}"
    if action in LEAD_ACTIONS:
        if quantity is not None:
            raise BadInput(f"--quantity cannot be combined with {action}: one job per lead")
        if payload is None:
            raise BadInput(f'{action} needs a payload: {{"leads": [{{"email": ...}}, ...]}}')
        # One validation pass for the whole list (10,000 leads in one request).
        model = DebounceLeadList if action == "debounce" else LeadList
        leads: LeadList = parse(model, payload, action)
        jobs = []
        for n, lead in enumerate(leads.leads):
            lead_key = lead.id or str(n)
            jobs.append((f"{base}:{lead_key}", (team, lead.model_dump(exclude_none=True)), lead.id))
        if len({j[0] for j in jobs}) != len(jobs):
            raise BadInput(f"malformed {action} payload: lead ids must be unique")
        return _keys_fit(action, base, jobs)
    count = check_quantity(quantity if quantity is not None else 1)
    lead_id = None
    if action == "ai_sequence":
        data = payload if payload is not None else {"prompt": DEFAULT_PROMPT}
        parse(SequencePayload, data, action)
    else:
        if payload is None:
            raise BadInput(f'{action} needs a payload: {{"lead": {{"first_name": ..., ...}}}}')
        data = payload
        # The lead's id as the worker reads it (whitespace stripped): its charge's key.
        lead_id = parse(IcebreakerPayload, data, action).lead.id
    ids = [base] if count == 1 else [f"{base}:{n}" for n in range(count)]
    return _keys_fit(action, base, [(i, (team, data), lead_id) for i in ids])


def _keys_fit(
    action: str, base: str, jobs: list[tuple[str, tuple[Any, ...], str | None]]
) -> list[tuple[str, tuple[Any, ...], str | None]]:
    """`jobs`, once every charge's key (job id, then lead id) is known to fit."""
    for jid, _, lead_id in jobs:
        key = charge_key(jid, lead_id)
        if len(key) > MAX_KEY:
            raise BadInput(
                f"malformed {action} payload: lead id {(lead_id or '')[:60]!r} is too long "
                f"for job id {base!r}: the charge's key (job id, then lead id) would have "
                f"{len(key)} characters, at most {MAX_KEY}"
            )
    return jobs


async def enqueue(
    redis: ArqRedis,
    catalog: Catalog,
    team: str,
    action: str,
    *,
    quantity: int | None = None,
    payload: dict[str, Any] | None = None,
    job_id: str | None = None,
    member: str | None = None,
    admit: Callable[[], Awaitable[None]] | None = None,
) -> list[Enqueued]:
    """Validate, then queue every job of the request in batches (worker/bulk.py).

    A job id given by the caller is the request's idempotency key within its team:
    the same request again queues nothing new, and another request of the team with
    it (another action, quantity or payload) is refused whole (`JobIdReused`).
    Another team's use of the same id is another job (module docstring).

    `member`: who launched the jobs (the JWT's sub, `--member`); each job's hold
    carries it, so the member's monthly cap applies. `admit`: a last check before
    anything is queued (it raises to refuse), skipped for a replay of a request
    already admitted: its jobs may have run and used the room it checks.
    """
    jobs = plan_jobs(catalog, team, action, quantity=quantity, payload=payload, job_id=job_id)
    by = {} if member is None else {"member": check_member(member)}
    if job_id is not None:
        prefix = f"{team}{TEAM_SEPARATOR}"
        bare = [(jid.removeprefix(prefix), args, lead) for jid, args, lead in jobs]
        if await _claimed_bare(redis, job_id, _fingerprint(action, bare)):
            jobs = bare  # this very request was queued under bare ids: a replay of it
        else:
            await _claim(redis, job_id, prefix + job_id, _fingerprint(action, jobs), admit)
    elif admit is not None:
        await admit()
    queued = await enqueue_many(
        redis, [JobSpec(action, jid, args, by) for jid, args, _ in jobs], queue=QUEUE
    )
    return [
        Enqueued(job_id=jid, action=action, lead_id=lead_id, queued=new)
        for (jid, _, lead_id), new in zip(jobs, queued, strict=True)
    ]


# Longer than any trace arq keeps of a job: a day queued at most (its job key's
# expiry), then its result for a day.
CLAIM_TTL_MS = 3 * 24 * 3600 * 1000
CLAIM_PREFIX = "tokens:job-id:"

# KEYS: the claim. ARGV: the request's fingerprint, the TTL. The fingerprint the id
# is claimed with: this one when the id was free.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then
    return held
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""


def _fingerprint(action: str, jobs: list[tuple[str, tuple[Any, ...], str | None]]) -> str:
    """What a request queues (ids and arguments, the team among them), whatever the
    payload's spelling (key order, whitespace that validation strips)."""
    planned = [action, [[jid, list(args)] for jid, args, _ in jobs]]
    text = json.dumps(
        planned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


async def _claim(
    redis: ArqRedis,
    job_id: str,
    claimed: str,
    fingerprint: str,
    admit: Callable[[], Awaitable[None]] | None = None,
) -> None:
    if admit is not None and await redis.get(CLAIM_PREFIX + claimed) is None:
        await admit()  # a new request; a replay (or a reused id) is decided below
    claim = redis.register_script(_CLAIM)
    held = await claim(keys=[CLAIM_PREFIX + claimed], args=[fingerprint, CLAIM_TTL_MS])
    if (held.decode() if isinstance(held, bytes) else held) != fingerprint:
        raise JobIdReused(job_id)


async def _claimed_bare(redis: ArqRedis, job_id: str, fingerprint: str) -> bool:
    """Whether this very request holds a claim under its bare job id, the form ids
    had before they named their team (a claim lives CLAIM_TTL_MS): answering with
    those jobs keeps a retry across an upgrade from queueing, and charging, the
    same leads again under new ids. Another request's bare claim (another team's
    among them) does not refuse this one."""
    held = await redis.get(CLAIM_PREFIX + job_id)
    return (held.decode() if isinstance(held, bytes) else held) == fingerprint


async def result(redis: ArqRedis, job_id: str, wait_s: float | None = None) -> Any:
    """A job's result (waits up to `wait_s` for it when given)."""
    return await Job(job_id, redis, _queue_name=QUEUE).result(timeout=wait_s)
