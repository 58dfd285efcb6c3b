"""Queue metered jobs and read their status: the same client code as `tokens enqueue`."""

from __future__ import annotations

from typing import Annotated, Any

from arq.jobs import Job, JobDef, JobResult, JobStatus
from fastapi import APIRouter, Path
from fastapi.encoders import jsonable_encoder

from api import auth, budget
from api.deps import AUTHED, WITH_BODY, Svc, Who, documented
from api.errors import ApiError
from api.schemas import JobOut, JobsIn, JobsOut, JobStatusOut
from api.teams import READERS, TeamPath
from ledger import shapes
from worker.client import enqueue
from worker.metering import charge_key
from worker.queue import ACTION_JOBS, QUEUE

router = APIRouter(tags=["jobs"])


@router.post("/v1/teams/{team:path}/jobs", status_code=202, responses=documented(*WITH_BODY, 409))
async def create_jobs(team: TeamPath, body: JobsIn, svc: Svc, who: Who) -> JobsOut:
    """Queue jobs: one per lead for enrich and debounce, one per generation for the AI
    actions. A whole list (10,000 leads and more) goes in one request; a bad one queues
    nothing."""
    auth.authorize(who, team, READERS)
    await svc.ledger.get_team(team)
    member = budget.member_of(who, body)

    async def all_fit() -> None:
        await budget.require_all_fit(svc, team, body, member)

    jobs = await enqueue(
        svc.redis,
        svc.ledger.catalog,
        team,
        body.action,
        quantity=body.quantity,
        payload=body.payload,
        job_id=body.job_id,
        member=member,
        admit=all_fit if body.only_if_all_fit else None,
    )
    return JobsOut(
        team=team,
        action=body.action,
        jobs=[JobOut(job_id=j.job_id, lead_id=j.lead_id, queued=j.queued) for j in jobs],
    )


# A finished job's own word -> the API's status (README "The HTTP API and the billing page").
_FINISHED = {
    "captured": "captured",
    "already_charged": "captured",
    "refused": "refused",
    "failed": "failed",
    "released": "released",
}


def _lead_id(action: str, args: tuple[Any, ...]) -> str | None:
    data = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
    lead = data if action in ("enrich", "debounce") else data.get("lead")
    if action == "ai_sequence" or not isinstance(lead, dict):
        return None
    found = lead.get("id")
    # As the worker reads it: its payload model strips whitespace.
    return str(found).strip() if found is not None else None


def _status(state: JobStatus, info: JobDef) -> str:
    if state in (JobStatus.queued, JobStatus.deferred):
        return "queued"
    if state == JobStatus.in_progress or not isinstance(info, JobResult):
        return "running"
    if not info.success or not isinstance(info.result, dict):
        return "failed"
    return _FINISHED.get(str(info.result.get("status")), "failed")


def _result(info: JobDef) -> dict[str, Any] | None:
    if not isinstance(info, JobResult):
        return None
    if info.success and isinstance(info.result, dict):
        out: dict[str, Any] = jsonable_encoder(info.result)
        return out
    return {"status": "failed", "error": f"{type(info.result).__name__}: {info.result}"}


@router.get("/v1/jobs/{job_id:path}", responses=documented(*AUTHED))  # a lead id may hold a "/"
async def job_status(
    job_id: Annotated[str, Path(min_length=1, max_length=300)], svc: Svc, who: Who
) -> JobStatusOut:
    """A job's status (queued, running, captured, refused, failed, released), its charge and
    its result; only for the job's team. arq keeps a finished job's result for 24 h."""
    auth.require_role(who, READERS)
    job = Job(job_id, svc.redis, _queue_name=QUEUE)
    state = await job.status()
    info = await job.info() if state != JobStatus.not_found else None
    # Another team's job answers as an unknown one: its id tells nothing of it.
    unknown = ApiError(404, "unknown_job", f"unknown job {job_id!r}")
    if info is None or info.function not in ACTION_JOBS or not info.args:
        raise unknown
    team = str(info.args[0])
    if not auth.may_see(who, team):
        raise unknown
    lead_id = _lead_id(info.function, info.args)
    charge = await svc.ledger.charge_by_key(team, charge_key(job_id, lead_id))
    return JobStatusOut.model_validate(
        {
            "job_id": job_id,
            "team": team,
            "action": info.function,
            "lead_id": lead_id,
            "status": _status(state, info),
            "charge": shapes.charge_dict(charge) if charge is not None else None,
            "result": _result(info),
        }
    )
