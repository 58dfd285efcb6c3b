"""The money path when its actors interleave: the worker, two reconcilers, Stripe,
finance and the app, in random orders from a seed, with the invariants checked after
every step and at rest (interleave.py, next to it, has the actors and the invariants):

 (i)   every captured additional token is on exactly one live bill, or unbilled (below
       the threshold, or its month not ended and settled, after a reconcile run);
 (ii)  what Stripe holds as open or paid for a bill's tokens is one invoice of the
       bill's amount, never more; at rest, per team, it equals what the live bills say;
 (iii) no pay request reaches an invoice that was void, uncollectible or paid before
       the send that paid it began;
 (iv)  no billing month grants more free tokens than plan x seats of the team's current
       subscription allowed during it, months are never cut, and at rest the team is on
       its current subscription;
 (v)   every search a vendor performed is captured exactly once, and nothing else is;
 (vi)  the ledger's running totals equal its charges (no drift);
 and the API's pool answers a billing read while webhooks arrive in bursts.

The default run is CI-sized. A long run: TOKENS_INTERLEAVE_STEPS=3000 (and
TOKENS_INTERLEAVE_SEED=N for one seed, TOKENS_INTERLEAVE_SEEDS=K for seeds 1..K).
A failure prints its seed and its steps; TOKENS_INTERLEAVE_SKIP=3,17 leaves steps out
(the others stay the same) to shorten a failing scenario.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from testing.stripe import StripeFake
from tests.billing import interleave
from tests.billing.interleave import Violation, World

CI_SEEDS = (1, 2, 3)
CI_STEPS = 60


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[ArqRedis]:
    client = await create_pool(RedisSettings.from_dsn(redis_url))
    yield client
    await client.aclose()


async def run_seed(
    database_url: str, redis_client: ArqRedis, seed: int, steps: int, teams: int = 3
) -> World:
    skip = frozenset(
        int(s) for s in os.environ.get("TOKENS_INTERLEAVE_SKIP", "").split(",") if s.strip()
    )
    async with interleave.pools(database_url) as (main, api, work):
        # Stripe at a few milliseconds a request: runs overlap other actors' steps.
        with StripeFake(seed=seed, latency=0.002) as fake:

            async def world() -> World:
                return World(
                    seed=seed,
                    pool=main,
                    api_pool=api,
                    worker_pool=work,
                    redis=redis_client,
                    fake=fake,
                    enabled=interleave.enabled_flags(),
                    teams=teams,
                )

            try:
                return await interleave.run(world, seed, steps, skip=skip)
            except Violation as v:
                w: World = v.world  # type: ignore[attr-defined]
                steps_text = "\n".join(w.log)
                disabled = sorted(set(interleave.PENDING_FIXES) - w.enabled)
                pytest.fail(
                    f"seed {seed} ({steps} steps): {v}\n"
                    f"replay: TOKENS_INTERLEAVE_SEED={seed} TOKENS_INTERLEAVE_STEPS={steps}\n"
                    f"actions off pending fixes: {disabled}\n{steps_text}",
                    pytrace=False,
                )


def _seeds() -> list[int]:
    if "TOKENS_INTERLEAVE_SEED" in os.environ:
        return [int(os.environ["TOKENS_INTERLEAVE_SEED"])]
    if "TOKENS_INTERLEAVE_SEEDS" in os.environ:
        return list(range(1, int(os.environ["TOKENS_INTERLEAVE_SEEDS"]) + 1))
    return list(CI_SEEDS)


@pytest.mark.parametrize("seed", _seeds())
async def test_actors_interleaved_keep_the_invariants(
    database_url: str, redis_client: ArqRedis, seed: int
) -> None:
    steps = int(os.environ.get("TOKENS_INTERLEAVE_STEPS", CI_STEPS))
    world = await run_seed(database_url, redis_client, seed, steps)
    skipped = len(frozenset(os.environ.get("TOKENS_INTERLEAVE_SKIP", "").split(",")) - {""})
    assert world.checks == steps - skipped, world.log
    assert world.log[-1] == "rest"
