"""`tokens enqueue`, `tokens worker` and `tokens demo`: jobs through arq (imported when run)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from cli import render
from cli.common import JsonOpt, run, settings_for
from ledger import shapes, validate
from ledger.errors import BadInput
from wiring.pools import open_ledger, open_queue
from wiring.servers import redis_url


def enqueue(
    team: str,
    action: str,
    quantity: Annotated[
        str | None, typer.Option("--quantity", help="Generations (AI actions only)")
    ] = None,
    payload: Annotated[str | None, typer.Option("--payload", help="Job payload, JSON")] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Base job id")] = None,
    member: Annotated[
        str | None, typer.Option("--member", help="Who launches them (their monthly cap applies)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Queue metered jobs: one per lead for enrich/debounce, one per generation for AI."""
    settings = settings_for()
    if member is not None:
        validate.member(member)
    qty = validate.parse_whole(quantity, "--quantity") if quantity is not None else None
    data = _json_payload(payload)

    async def go() -> list[dict[str, Any]]:
        from worker.client import enqueue as enqueue_jobs
        from worker.client import plan_jobs

        async with open_ledger(settings) as ledger:
            plan_jobs(ledger.catalog, team, action, quantity=qty, payload=data, job_id=job_id)
            await ledger.get_team(team)
            async with open_queue(settings) as redis:
                jobs = await enqueue_jobs(
                    redis,
                    ledger.catalog,
                    team,
                    action,
                    quantity=qty,
                    payload=data,
                    job_id=job_id,
                    member=member,
                )
        return [
            {"job_id": j.job_id, "action": j.action, "lead_id": j.lead_id, "queued": j.queued}
            for j in jobs
        ]

    jobs = run(go())
    if json_out:
        render.print_json({"team": team, "action": action, "jobs": jobs})
    else:
        new = sum(j["queued"] for j in jobs)
        print(
            f"queued {new} {action} job(s) for team {team}"
            + (f" ({len(jobs) - new} already queued)" if new < len(jobs) else "")
        )
        for j in jobs[:10]:
            print(f"  {j['job_id']}")
        if len(jobs) > 10:
            print(f"  ... and {len(jobs) - 10} more")


def _json_payload(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"--payload is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise BadInput("--payload must be a JSON object")
    return data


def worker(
    burst: Annotated[bool, typer.Option("--burst", help="Run the queued jobs, then exit.")] = False,
) -> None:
    """Run the arq worker: metered jobs, the periodic reconcile and the hold-expiry sweep."""
    settings = settings_for(service=True)
    from worker.settings import TokensWorker, worker_kwargs

    async def go() -> None:
        w = TokensWorker(**worker_kwargs(settings, redis_url(settings), burst=burst))
        try:
            # async_run gives arq a main task to cancel once SIGTERM's wait is over.
            await w.async_run()
        except asyncio.CancelledError:
            pass  # shut down by a signal, after the running jobs finished or were cancelled
        finally:
            await w.close()

    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port)
    run(go(), uvloop=True)


def demo(
    reset: Annotated[
        bool, typer.Option("--reset", help="Stop the embedded servers and delete their data first.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """A simulated billing month on embedded defaults, through the real worker path."""
    settings = settings_for(quiet=True)
    if reset:
        if settings.database_url or settings.redis_url:
            raise BadInput("--reset only wipes embedded servers; unset the TOKENS_*_URL variables")
        import shutil

        from runtime.embedded import stop_servers

        stop_servers(settings.data_dir)
        shutil.rmtree(settings.data_dir, ignore_errors=True)

    from cli.demo import run_demo

    async def go() -> dict[str, Any]:
        async with open_ledger(settings, max_size=20) as ledger:
            url = redis_url(settings)
            with render.progress_bar("running jobs", enabled=not json_out) as advance:
                return await run_demo(ledger, settings, url, advance)

    out = run(go())
    if json_out:
        render.print_json(
            {
                "teams": out["teams"],
                "jobs": out["jobs"],
                "outcomes": out["outcomes"],
                "billing": [shapes.billing_dict(s, at=out["read_at"]) for s in out["sections"]],
                "bills": out["bills"],
            }
        )
        return
    render.console().print(
        f"[bold]{out['jobs']} jobs[/bold] through arq and the sandbox providers: "
        + ", ".join(f"{n} {k}" for k, n in sorted(out["outcomes"].items()))
    )
    for section in out["sections"]:
        render.console().rule()
        render.print_billing(section, at=out["read_at"])
    render.console().rule()
    render.print_reconcile(
        {
            "bills_created": len(out["bills"]),
            "bills_sent": sum(b["status"] in ("paid", "open") for b in out["bills"]),
            "bills_failed": sum(b["status"] == "failed" for b in out["bills"]),
            "bills_unsent": sum(b["status"] == "unsent" for b in out["bills"]),
            "seconds": 0,
            "bills": out["bills"],
        }
    )
    if not out["stripe"]:
        render.console().print(
            "Bills stay unsent: no STRIPE_API_KEY. Set it (and TOKENS_STRIPE_API_BASE for a "
            "Stripe-compatible server) to send them; `tokens reconcile` sends what is pending."
        )
