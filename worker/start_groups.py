"""The jobs a worker takes in one poll start together (TokensWorker, worker/arq_shim.py).

arq takes a job in four Redis round trips and then reads it in a fifth, its
own pipeline per job, so jobs taken in one poll would reach their holds one
by one, each in its own loop turn, and group commit would find little to
group (a lone first hold, then the rest a few at a time). Two meeting points
keep a group together:

1. taken: no job of the group runs before the last one is taken;
2. met: a job's function starts only when every job of its group has read
   its job (arq's `on_job_start`) or has ended without getting there (not
   found, expired, out of tries). The metered jobs then hold in the same
   loop turn: one `tokens_apply` for the group's holds, and, the sandbox
   searches answering at once, one for its captures.

A member that is slow to read its job (Redis away, riding the outage out)
keeps the others waiting at most `MEET_WAIT_S`; they go on without it. The
wait comes before arq starts the job's clock (its timeout counts from the
function's start), and changes nothing in how a job is taken or run.
"""

from __future__ import annotations

import asyncio

# How long the members that read their jobs wait for one that has not.
MEET_WAIT_S = 0.2


class StartGroup:
    """Up to `TokensWorker.start_group` jobs taken by one poll."""

    def __init__(self) -> None:
        self.size = 0
        self._taken = asyncio.Event()
        self._met = asyncio.Event()
        self._away = 0  # members that have neither read their job nor ended
        self._timer: asyncio.TimerHandle | None = None

    def join(self) -> Member:
        self.size += 1
        self._away += 1
        return Member(self)

    def close(self) -> None:
        """Every member is taken: they may run."""
        self._taken.set()
        self._check()

    async def taken(self) -> None:
        await self._taken.wait()

    @property
    def met(self) -> bool:
        """Its members may start: all there (or ended) once taken, or the wait is over."""
        return self._met.is_set()

    async def meet(self) -> None:
        if self._met.is_set():
            return
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(MEET_WAIT_S, self._release)
        await self._met.wait()

    def _arrived(self) -> None:
        self._away -= 1
        self._check()

    def _check(self) -> None:
        if self._away <= 0 and self._taken.is_set():
            self._release()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._met.set()


class Member:
    """One job of a group."""

    def __init__(self, group: StartGroup) -> None:
        self.group = group
        self._here = False

    async def meet(self) -> None:
        """At its function's start: wait for the rest of the group."""
        if self._here:
            return
        met_before = self.group.met
        self.arrived()
        woke_others = not met_before and self.group.met
        await self.group.meet()
        if woke_others:
            # The last to arrive woke the others for the next loop turn: it waits
            # for that turn too, so that every member starts its function in the
            # same one (and their holds go to the ledger together).
            await asyncio.sleep(0)

    def arrived(self) -> None:
        """Here, or ended without getting here: the others no longer wait for it."""
        if not self._here:
            self._here = True
            self.group._arrived()
