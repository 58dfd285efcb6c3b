"""A vendor's limits, kept by every worker together in Redis.

A vendor counts our calls per key, not per process: DeBounce answers 429 past
5 calls at once, Hunter 403 past 15 a second. So the slots, the rate windows,
the cool-down after a rate-limit answer and the pause after "your key / your
credits" live in Redis, under `tokens:vendor:<name>:...`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

# Enter if the vendor is not cooling down, a slot is free and every rate window
# has room; else answer how many ms to wait. One script: no two workers take
# the last slot.
_ENTER = """
local now = tonumber(ARGV[1])
local cool = redis.call('PTTL', KEYS[1])
if cool > 0 then return cool end
local limit = tonumber(ARGV[3])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= limit then return 25 end
end
local n = tonumber(ARGV[5])
for i = 1, n do
  local window = tonumber(ARGV[5 + 2 * i - 1])
  local calls = tonumber(ARGV[5 + 2 * i])
  local used = tonumber(redis.call('GET', KEYS[2 + i]) or '0')
  if used >= calls then return window - (now % window) end
end
for i = 1, n do
  local window = tonumber(ARGV[5 + 2 * i - 1])
  if redis.call('INCR', KEYS[2 + i]) == 1 then redis.call('PEXPIRE', KEYS[2 + i], window * 2) end
end
if limit > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
end
return 0
"""

# Cool down for at least `ms` (a longer cool-down already set is kept).
_COOL = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 1
"""


class Gate:
    """Pause, cool-down, concurrency and rate windows of one vendor."""

    def __init__(
        self,
        redis: Any,
        vendor: str,
        *,
        concurrency: int = 0,
        rates: tuple[tuple[float, int], ...] = (),
        slot_ttl: float = 60.0,
    ) -> None:
        self._redis = redis
        self._prefix = f"tokens:vendor:{vendor}:"
        self._concurrency = concurrency
        self._rates = tuple((int(window * 1000), calls) for window, calls in rates)
        self._slot_ttl_ms = int(slot_ttl * 1000)

    @property
    def pause_key(self) -> str:
        return self._prefix + "paused"

    async def pause_left(self) -> float:
        """Seconds this vendor stays paused (0: not paused)."""
        left = await self._redis.pttl(self.pause_key)
        return max(int(left), 0) / 1000

    async def pause(self, seconds: float) -> bool:
        """Pause the vendor; True only for the call that paused it (it tells the operator)."""
        return bool(await self._redis.set(self.pause_key, "1", px=int(seconds * 1000), nx=True))

    async def cool(self, seconds: float) -> None:
        await self._redis.eval(_COOL, 1, self._prefix + "cool", int(seconds * 1000))

    async def enter(self, deadline: float) -> str | None:
        """A slot for one call, waiting for one until `deadline` (monotonic); None if none came."""
        token = uuid.uuid4().hex
        while True:
            now_ms = int(time.time() * 1000)
            keys = [self._prefix + "cool", self._prefix + "slots"]
            args: list[Any] = [
                now_ms,
                token,
                self._concurrency,
                self._slot_ttl_ms,
                len(self._rates),
            ]
            for window, calls in self._rates:
                keys.append(f"{self._prefix}rate:{window}:{now_ms // window}")
                args += [window, calls]
            wait_ms = int(await self._redis.eval(_ENTER, len(keys), *keys, *args))
            if wait_ms <= 0:
                return token
            left = deadline - time.monotonic()
            if left <= 0 or wait_ms / 1000 > left:
                return None
            # Waiting for the vendor's own limit to open, as its docs ask.
            await asyncio.sleep(wait_ms / 1000)

    async def leave(self, token: str) -> None:
        if self._concurrency > 0:
            await self._redis.zrem(self._prefix + "slots", token)
