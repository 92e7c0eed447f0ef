"""Limits that hold across every worker on every machine, kept in Redis.

Concurrency is a ZSET of leases (token -> expiry): a worker killed mid-call gives its slot
back when the lease runs out. Each process queues its own waiters locally so that only one
of them polls Redis at a time.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from redis.asyncio import Redis

from jobs.constants import CONCURRENCY_KEY

POLL_MIN_S = 0.005
POLL_MAX_S = 0.1


def _script(name: str) -> str:
    return resources.files("worker").joinpath(name).read_text()


class ConcurrencyLimiter:
    """At most `limit` holders at once for `scope`, across the cluster."""

    def __init__(self, redis: Redis, scope: str, limit: int, lease_s: float) -> None:
        self.redis = redis
        self.key = CONCURRENCY_KEY + scope
        self.limit = limit
        self.lease_ms = int(lease_s * 1000)
        self._acquire = redis.register_script(_script("concurrency.lua"))
        self._turn = asyncio.Lock()  # FIFO: one local waiter polls Redis at a time
        self._released = asyncio.Event()
        self.held: set[str] = set()

    async def acquire(self) -> str:
        token = secrets.token_hex(8)
        async with self._turn:
            delay_s = POLL_MIN_S
            while True:
                now_ms = int(time.time() * 1000)
                if await self._acquire(
                    keys=[self.key], args=[now_ms, self.lease_ms, self.limit, token]
                ):
                    self.held.add(token)
                    return token
                self._released.clear()
                try:
                    # a local release wakes us at once; other workers' releases are polled
                    await asyncio.wait_for(self._released.wait(), delay_s)
                except TimeoutError:
                    delay_s = min(delay_s * 2, POLL_MAX_S)

    async def release(self, token: str) -> None:
        self.held.discard(token)
        self._released.set()
        await self.redis.zrem(self.key, token)

    async def renew(self) -> None:
        """Push the leases of the slots this process holds forward (called periodically)."""
        if self.held:
            expiry_ms = int(time.time() * 1000) + self.lease_ms
            await self.redis.zadd(self.key, {t: expiry_ms for t in self.held}, xx=True)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        token = await self.acquire()
        try:
            yield
        finally:
            await asyncio.shield(self.release(token))

    async def in_use(self) -> int:
        now_ms = int(time.time() * 1000)
        return int(await self.redis.zcount(self.key, now_ms, "+inf"))
