"""The cluster-wide limits, against a real Redis: slots, windows, the pause, AIMD."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from worker.limits import Concurrency, Limits, Pause, RateWindow


def run(redis_url: str, body: Callable[[Redis], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        redis = Redis.from_url(redis_url)
        try:
            return await body(redis)
        finally:
            await redis.aclose()

    return asyncio.run(main())


def test_a_slot_is_given_only_when_one_is_free(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        slots = Concurrency(redis, "up", hard_limit=2, lease_s=30)
        other = Concurrency(redis, "up", hard_limit=2, lease_s=30)  # another process
        (a, _), _b = await slots.acquire(), await slots.acquire()
        third = asyncio.create_task(other.acquire())
        await asyncio.sleep(0.2)
        assert not third.done()
        await slots.release(a)
        await asyncio.wait_for(third, 1)

    run(redis_url, body)


def test_a_dead_holders_slot_comes_back_when_its_lease_runs_out(redis_url: str) -> None:
    async def body(redis: Redis) -> float:
        dead = Concurrency(redis, "up", hard_limit=1, lease_s=0.3)
        await dead.acquire()  # never released, never renewed
        alive = Concurrency(redis, "up", hard_limit=1, lease_s=0.3)
        started = time.monotonic()
        await asyncio.wait_for(alive.acquire(), 3)
        return time.monotonic() - started

    assert run(redis_url, body) >= 0.2


def test_renewed_leases_are_kept(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        holder = Concurrency(redis, "up", hard_limit=1, lease_s=0.3)
        await holder.acquire()
        waiter = asyncio.create_task(Concurrency(redis, "up", 1, 0.3).acquire())
        for _ in range(5):
            await asyncio.sleep(0.1)
            await holder.renew()
        assert not waiter.done()
        waiter.cancel()

    run(redis_url, body)


def test_the_request_window_admits_its_budget_then_names_the_wait(redis_url: str) -> None:
    async def body(redis: Redis) -> int:
        window = RateWindow(redis, "up|m", rpm=5, tpm=None)
        for i in range(5):
            await asyncio.wait_for(window.admit(f"r{i}", 1), 1)
        return int(await window._admit(keys=window.keys, args=[window.window_ms, 5, 0, "r5", 1]))

    wait_ms = run(redis_url, body)
    assert 59_000 < wait_ms <= 60_501


def test_tokens_are_reserved_then_reconciled_with_real_usage(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        window = RateWindow(redis, "up|m", rpm=None, tpm=100)
        await window.admit("a", 60)
        args = [window.window_ms, 0, 100, "b", 50]
        assert int(await window._admit(keys=window.keys, args=args)) > 0
        await window.reconcile("a", 60, 20)  # it used less than estimated
        assert int(await window._admit(keys=window.keys, args=args)) == 0
        assert int(await redis.get(window.keys[2])) == 70

    run(redis_url, body)


def test_a_request_bigger_than_the_token_budget_still_runs_alone(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        window = RateWindow(redis, "up|m", rpm=None, tpm=100)
        await asyncio.wait_for(window.admit("huge", 500), 1)

    run(redis_url, body)


def test_a_pause_holds_every_process_then_lets_one_probe_each(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        setter, other = Pause(redis, "up"), Pause(redis, "up")
        await setter.pause(0.3)
        started = time.monotonic()
        assert await other.wait() is True  # the first call after the pause is a probe
        assert time.monotonic() - started >= 0.25
        follower = asyncio.create_task(other.wait())
        await asyncio.sleep(0.1)
        assert not follower.done()  # waits for the probe's answer
        other.probe_finished(rate_limited=False)
        assert await asyncio.wait_for(follower, 1) is False

    run(redis_url, body)


def test_overload_shrinks_the_shared_limit_once_per_episode_and_success_grows_it(
    redis_url: str,
) -> None:
    async def body(redis: Redis) -> list[float]:
        slots = Concurrency(redis, "up", hard_limit=10, lease_s=30)
        seen = [await slots.adapt(overloaded=True), await slots.adapt(overloaded=True)]
        for _ in range(20):
            seen.append(await slots.adapt(overloaded=False))
        return seen

    seen = run(redis_url, body)
    assert seen[0] == seen[1] == 7.0  # the second signal fell in the same episode
    assert 7.0 < seen[-1] <= 10.0


def test_the_adaptive_limit_caps_how_many_slots_are_given(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        slots = Concurrency(redis, "up", hard_limit=10, lease_s=30)
        await redis.set(slots.adaptive_key, "2.5")
        await slots.acquire()
        await slots.acquire()
        third = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.1)
        assert not third.done()
        third.cancel()

    run(redis_url, body)


def test_a_slot_reports_a_pause_in_the_same_round_trip(redis_url: str) -> None:
    async def body(redis: Redis) -> int:
        await Pause(redis, "up").pause(5)
        _, paused_ms = await Concurrency(redis, "up", hard_limit=1, lease_s=30).acquire()
        return paused_ms

    assert 4000 < run(redis_url, body) <= 5000


def test_a_successful_release_grows_a_lowered_limit(redis_url: str) -> None:
    async def body(redis: Redis) -> float:
        slots = Concurrency(redis, "up", hard_limit=10, lease_s=30)
        await redis.set(slots.adaptive_key, "4")
        token, _ = await slots.acquire()
        await slots.release(token, succeeded=True)
        assert await redis.zcard(slots.key) == 0
        return float(await redis.get(slots.adaptive_key))

    assert run(redis_url, body) == 4.25


def test_limits_admit_through_pause_slots_and_window(redis_url: str) -> None:
    async def body(redis: Redis) -> int:
        limits = Limits(redis, "up", max_concurrency=2, lease_s=30, rpm=100, tpm=10_000)
        async with limits.admit("m", 100) as admission:
            await admission.succeeded(40)
        return int(await redis.get("promptq:tpm:up|m:sum"))

    assert run(redis_url, body) == 40


def test_an_interactive_waiter_takes_the_next_free_slot_before_bulk_waiters(
    redis_url: str,
) -> None:
    async def body(redis: Redis) -> list[str]:
        holder = Concurrency(redis, "prio", hard_limit=1, lease_s=30)
        bulk = Concurrency(redis, "prio", hard_limit=1, lease_s=30)  # another process
        urgent = Concurrency(redis, "prio", hard_limit=1, lease_s=30)  # and a third
        token, _ = await holder.acquire()
        order: list[str] = []

        async def take(slots: Concurrency, name: str, interactive: bool) -> None:
            got, _ = await slots.acquire(interactive)
            order.append(name)
            await slots.release(got)

        bulk_waiters = [asyncio.create_task(take(bulk, f"bulk{i}", False)) for i in range(3)]
        await asyncio.sleep(0.1)  # the bulk callers were waiting first
        waiter = asyncio.create_task(take(urgent, "interactive", True))
        await asyncio.sleep(0.1)
        await holder.release(token)
        await asyncio.wait_for(asyncio.gather(waiter, *bulk_waiters), 5)
        return order

    assert run(redis_url, body)[0] == "interactive"


def test_a_dead_interactive_waiter_stops_holding_bulk_callers_back(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        holder = Concurrency(redis, "gone", hard_limit=1, lease_s=30)
        token, _ = await holder.acquire()
        waiter = asyncio.create_task(
            Concurrency(redis, "gone", hard_limit=1, lease_s=30).acquire(True)
        )
        await asyncio.sleep(0.1)
        waiter.cancel()  # it registered its wish to go first, then went away
        await holder.release(token)
        await asyncio.wait_for(Concurrency(redis, "gone", 1, 30).acquire(), 3)

    run(redis_url, body)
