"""Limits that hold across every worker on every machine, kept in Redis.

- Concurrency per upstream: a ZSET of leases; a worker killed mid-call gives its slot back
  when the lease runs out. Its effective size adapts (AIMD) under the hard cap.
- Requests and tokens per minute per upstream and model: exact sliding windows; tokens are
  reserved from an estimate and reconciled with the real usage afterwards.
- A 429 pauses the whole upstream for as long as it said; afterwards each process sends one
  probe and waits for its answer before letting the rest go.

Each process queues its own waiters (asyncio locks are FIFO), so one of them at a time asks
Redis, and Lua scripts on Redis' clock make every decision atomic.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs.constants import (
    ADAPTIVE_KEY,
    CONCURRENCY_KEY,
    INTERACTIVE_WAITING_KEY,
    PAUSE_KEY,
    RPM_KEY,
    TPM_KEY,
)
from jobs.models import Priority

log = logging.getLogger(__name__)

POLL_MIN_S = 0.002
POLL_MAX_S = 0.02
WINDOW_S = 60.0
# Clock and network jitter move a call's arrival by milliseconds: keep a margin so that no
# 60-second window at the upstream can hold more than the budget.
WINDOW_MARGIN_S = 0.5
DECREASE_FACTOR = 0.7
DECREASE_EVERY_S = 1.0
# An interactive waiter renews its claim to go first at every poll (<= POLL_MAX_S apart);
# one that died stops holding bulk callers back after this long.
WAITER_WISH_MS = 1000


def _lua(redis: Redis, name: str) -> Any:
    return redis.register_script(resources.files("worker").joinpath(f"lua/{name}").read_text())


@dataclass(frozen=True)
class ModelLimits:
    """Budgets for one upstream and model; None means no limit."""

    max_concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None


class Concurrency:
    """At most `hard_limit` (or the adaptive limit, if lower) holders at once, cluster-wide."""

    def __init__(self, redis: Redis, scope: str, hard_limit: int, lease_s: float) -> None:
        self.redis = redis
        self.key = CONCURRENCY_KEY + scope
        self.adaptive_key = ADAPTIVE_KEY + scope
        self.hard_limit = hard_limit
        self.lease_ms = int(lease_s * 1000)
        self.pause_key = PAUSE_KEY + scope
        self._acquire = _lua(redis, "concurrency.lua")
        self._release = _lua(redis, "release.lua")
        self._renew = _lua(redis, "renew.lua")
        self._prefix = secrets.token_hex(6) + ":"
        self._serial = itertools.count()
        self._adapt = _lua(redis, "adapt.lua")
        self.waiting_key = INTERACTIVE_WAITING_KEY + scope
        self._turns = {False: asyncio.Lock(), True: asyncio.Lock()}
        self._released = asyncio.Event()
        self.held: set[str] = set()

    async def acquire(self, interactive: bool = False) -> tuple[str, int]:
        """A slot's token, and the ms left of any 429 pause (read in the same round trip).

        Interactive callers queue apart (their own local turn) and, cluster-wide, keep every
        bulk caller out while one of them waits.
        """
        token = f"{self._prefix}{next(self._serial)}"
        keys = [self.key, self.adaptive_key, self.pause_key, self.waiting_key]
        args = [self.lease_ms, self.hard_limit, token, int(interactive), WAITER_WISH_MS]
        async with self._turns[interactive]:
            delay_s = POLL_MIN_S
            while True:
                taken, paused_ms = await self._acquire(keys=keys, args=args)
                if taken:
                    break
                self._released.clear()
                try:
                    # a local release wakes us at once; other processes' releases are polled.
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that lands as it times out, and the waiter polls on
                    async with asyncio.timeout(delay_s):
                        await self._released.wait()
                except TimeoutError:
                    delay_s = min(delay_s * 2, POLL_MAX_S)
        self.held.add(token)
        return token, int(paused_ms)

    async def release(self, token: str, succeeded: bool = False) -> None:
        """Give the slot back; a success also grows the adaptive limit (one round trip)."""
        self.held.discard(token)
        self._released.set()
        await self._release(
            keys=[self.key, self.adaptive_key], args=[token, int(succeeded), self.hard_limit]
        )

    async def renew(self) -> None:
        if self.held:
            await self._renew(keys=[self.key], args=[self.lease_ms, *self.held])

    async def adapt(self, overloaded: bool) -> float:
        """AIMD: shrink the effective limit on overload, grow it back as calls succeed."""
        args = [
            "down" if overloaded else "up",
            self.hard_limit,
            DECREASE_FACTOR,
            int(DECREASE_EVERY_S * 1000),
        ]
        return float(await self._adapt(keys=[self.adaptive_key], args=args))


class RateWindow:
    """Requests and tokens per minute for one upstream and model, cluster-wide."""

    def __init__(self, redis: Redis, scope: str, rpm: int | None, tpm: int | None) -> None:
        self.keys = [RPM_KEY + scope, TPM_KEY + scope, TPM_KEY + scope + ":sum"]
        self.rpm, self.tpm = rpm or 0, tpm or 0
        self.window_ms = int((WINDOW_S + WINDOW_MARGIN_S) * 1000)
        self._admit = _lua(redis, "window.lua")
        self._reconcile = _lua(redis, "reconcile.lua")
        self._turn = asyncio.Lock()

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    async def admit(self, member: str, tokens: int) -> None:
        args = [self.window_ms, self.rpm, self.tpm, member, tokens]
        async with self._turn:
            while wait_ms := await self._admit(keys=self.keys, args=args):
                await asyncio.sleep(int(wait_ms) / 1000)

    async def reconcile(self, member: str, estimate: int, actual: int) -> None:
        if self.tpm and actual != estimate:
            await self._reconcile(keys=self.keys[1:], args=[member, estimate, actual])


class Pause:
    """The cluster-wide pause a 429 sets, and this process's one probe after it."""

    def __init__(self, redis: Redis, scope: str) -> None:
        self.key = PAUSE_KEY + scope
        self._pause = _lua(redis, "pause.lua")
        self.after_pause = False
        self.probing = False
        self._probe_done = asyncio.Event()

    async def pause(self, seconds: float) -> None:
        self.after_pause = True
        await self._pause(keys=[self.key], args=[max(1, int(seconds * 1000))])

    async def wait(self) -> bool:
        """Return when a call may go; True when it is this process's probe after a pause."""
        while True:
            left_ms = int(await self._pause(keys=[self.key], args=[0]))
            if left_ms > 0:
                self.after_pause = True
                # spread the restart over a few ms so that processes do not probe in lockstep
                await asyncio.sleep(left_ms / 1000 + random.uniform(0, 0.05))
                continue
            if not self.after_pause:
                return False
            if not self.probing:
                self.probing = True
                self._probe_done.clear()
                return True
            await self._probe_done.wait()

    def probe_finished(self, rate_limited: bool) -> None:
        if not rate_limited:
            self.after_pause = False
        self.probing = False
        self._probe_done.set()


class Limits:
    """Everything a call must pass before it goes upstream, for one upstream."""

    def __init__(
        self,
        redis: Redis,
        upstream: str,
        *,
        max_concurrency: int,
        lease_s: float,
        rpm: int | None = None,
        tpm: int | None = None,
        overrides: dict[str, ModelLimits] | None = None,
    ) -> None:
        self.redis = redis
        self.upstream = upstream
        self.lease_s = lease_s
        self.defaults = ModelLimits(None, rpm, tpm)
        self.overrides = overrides or {}
        self.concurrency = Concurrency(redis, upstream, max_concurrency, lease_s)
        self.pause = Pause(redis, upstream)
        self._models: dict[str, tuple[Concurrency | None, RateWindow]] = {}

    def _for_model(self, model: str) -> tuple[Concurrency | None, RateWindow]:
        if model not in self._models:
            limits = self.overrides.get(model) or self.defaults
            scope = f"{self.upstream}|{model}"
            cap = (
                Concurrency(self.redis, scope, limits.max_concurrency, self.lease_s)
                if limits.max_concurrency
                else None
            )
            self._models[model] = (cap, RateWindow(self.redis, scope, limits.rpm, limits.tpm))
        return self._models[model]

    @asynccontextmanager
    async def admit(
        self, model: str, tokens: int, priority: str = Priority.BULK
    ) -> AsyncIterator[Admission]:
        """Wait for a slot (upstream, then model), the rate budget, and the end of any pause.

        The pause is checked last, right before the call: waiters that queued for a slot
        before a 429 arrived must not go out during the pause.
        """
        model_cap, window = self._for_model(model)
        interactive = priority == Priority.INTERACTIVE
        token, paused_ms = await self.concurrency.acquire(interactive)
        model_token = None
        admission = Admission(self, window, token, tokens, probe=False)
        try:
            if model_cap:
                model_token, _ = await model_cap.acquire(interactive)
            if window.active:
                await window.admit(admission.member, tokens)
            # the slot's round trip read the pause; ask again only if it may have changed
            if paused_ms or self.pause.after_pause or window.active or model_cap:
                admission.probe = await self.pause.wait()
            yield admission
        finally:
            if admission.probe and admission.outcome is None:
                self.pause.probe_finished(rate_limited=True)
            ok = admission.outcome == "ok"
            try:
                await asyncio.shield(self.concurrency.release(token, ok))
                if model_cap and model_token:
                    await asyncio.shield(model_cap.release(model_token, ok))
            except RedisError as exc:  # the lease expires instead; the call's outcome stands
                log.warning("could not release a slot: %s", exc)

    async def renew(self) -> None:
        await self.concurrency.renew()
        for cap, _ in self._models.values():
            if cap:
                await cap.renew()


@dataclass
class Admission:
    """One admitted call; tell it how the call went."""

    limits: Limits
    window: RateWindow
    member: str
    estimate: int
    probe: bool
    outcome: str | None = None  # ok | overloaded | failed

    async def succeeded(self, actual_tokens: int | None) -> None:
        self.outcome = "ok"
        if self.probe:
            self.limits.pause.probe_finished(rate_limited=False)
        if actual_tokens is not None:
            await self.window.reconcile(self.member, self.estimate, actual_tokens)

    async def overloaded(self, rate_limited_for_s: float | None) -> None:
        """A 429 (pause everyone for `rate_limited_for_s`), a 503 or a timeout."""
        self.outcome = "overloaded"
        if rate_limited_for_s is not None:
            await self.limits.pause.pause(rate_limited_for_s)
        if self.probe:
            self.limits.pause.probe_finished(rate_limited=rate_limited_for_s is not None)
        await self.limits.concurrency.adapt(overloaded=True)

    async def failed(self) -> None:
        """Any other failure: no signal about load."""
        self.outcome = "failed"
        if self.probe:
            self.limits.pause.probe_finished(rate_limited=False)
