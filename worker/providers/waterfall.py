"""A waterfall: the action's vendors asked in order until one finds the lead.

One lead is one charge of the action's tokens, whatever number of vendors
were asked: the job holds once, and captures once if any vendor searched.
Which vendor answered what is kept in the result (`data.vendors`).

- A vendor that searched and found, at or above the minimum confidence,
  ends the waterfall (unless `stop_at_first_found` is off: then every vendor
  is asked and the most confident answer kept).
- One that searched and found nothing, or too little, passes to the next.
- One that refused the lead, or our key, or asks to wait, passes too.
- A paused vendor (our key or credits, see vendor.py) is not asked.

The end: a search happened -> the best result is the job's (captured); no
search but a vendor asks to wait -> retry with the hold; every vendor paused
before it was asked -> the job waits for the pause, its try given back; else
-> nothing was searched, the hold is released.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.payloads import Lead
from worker.providers.base import Outcome, ProviderFailure, SearchResult, VendorsPaused
from worker.providers.vendor import Kind, Reply, VendorClient

_GOOD = {"enrich": (Outcome.FOUND,), "verify": (Outcome.FOUND, Outcome.INVALID)}


class Waterfall:
    """An `EnrichProvider` and a `VerifyProvider` made of real vendors."""

    sandbox = False

    def __init__(
        self,
        action: str,
        clients: Sequence[VendorClient],
        *,
        min_confidence: int = 0,
        stop_at_first_found: bool = True,
    ) -> None:
        if not clients:
            raise ValueError(f"a {action} waterfall needs at least one vendor")
        self.action = action
        self.clients = tuple(clients)
        self.min_confidence = min_confidence
        self.stop_at_first_found = stop_at_first_found
        self.name = "waterfall:" + ",".join(c.name for c in clients)

    def __repr__(self) -> str:
        return f"Waterfall({self.action!r}, {list(self.clients)!r})"

    async def enrich(self, lead: Lead) -> SearchResult:
        return await self.run(lead)

    async def verify(self, lead: Lead) -> SearchResult:
        return await self.run(lead)

    def good(self, reply: Reply) -> bool:
        result = reply.result
        return (
            result is not None
            and result.outcome in _GOOD[self.action]
            and reply.confidence >= self.min_confidence
        )

    async def run(self, lead: Lead) -> SearchResult:
        trail: list[dict[str, Any]] = []
        searched: list[Reply] = []
        waiting: list[Reply] = []
        paused: list[float] = []
        for client in self.clients:
            left = await client.gate.pause_left()
            if left > 0:
                paused.append(left)
                trail.append({"vendor": client.name, "answer": "paused", "pause_left_s": left})
                continue
            reply = await client.ask(lead, self.min_confidence)
            trail.append(reply.trail())
            if reply.kind is Kind.SEARCHED:
                searched.append(reply)
                if reply.stop or (self.stop_at_first_found and self.good(reply)):
                    break
            elif reply.kind is Kind.WAIT:
                waiting.append(reply)
        if searched:
            return self._best(searched, trail)
        if waiting:
            reasons = "; ".join(f"{r.vendor}: {r.reason}" for r in waiting)
            raise ProviderFailure(self.name, reasons, retryable=True)
        if len(paused) == len(self.clients):
            raise VendorsPaused(defer=min(paused))
        reasons = "; ".join(f"{t['vendor']}: {t.get('reason', t['answer'])}" for t in trail)
        raise ProviderFailure(self.name, f"no vendor could search: {reasons}", retryable=False)

    def _best(self, searched: list[Reply], trail: list[dict[str, Any]]) -> SearchResult:
        good = [r for r in searched if self.good(r)]
        # The first good answer in waterfall order; asking everyone: the most confident.
        if good:
            best = (
                max(good, key=lambda r: r.confidence) if not self.stop_at_first_found else good[0]
            )
        else:
            found = [
                r
                for r in searched
                if r.result is not None and r.result.outcome in _GOOD[self.action]
            ]
            best = max(found, key=lambda r: r.confidence) if found else searched[-1]
        assert best.result is not None
        data = dict(best.result.data)
        data["min_confidence_met"] = best in good
        data["vendors"] = trail
        return SearchResult(best.result.outcome, data, best.result.provider, sandbox=False)
