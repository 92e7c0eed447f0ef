"""Upstream call telemetry, written to a real Redis in one round trip and never raising."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from jobs.constants import (
    METRICS_CALLS_KEY,
    METRICS_LATENCY_BUCKETS_KEY,
    METRICS_LATENCY_SUM_KEY,
    METRICS_RATE_LIMITED_KEY,
)
from tests.services import free_tcp_port
from worker.telemetry import CallCounter, bucket_bound, label_field, record_call

UPSTREAM = "api.cometapi.com:443"
MODEL = "o1-mini-2024-09-12"


def record(redis_url: str, *calls: tuple[float | None, str]) -> None:
    async def main() -> None:
        redis = Redis.from_url(redis_url)
        try:
            for latency_s, outcome in calls:
                await record_call(redis, UPSTREAM, MODEL, latency_s, outcome)
        finally:
            await redis.aclose()

    asyncio.run(main())


def read(redis_url: str, key: str) -> dict[tuple[str, ...], str]:
    with SyncRedis.from_url(redis_url) as client:
        raw = client.hgetall(key)
    return {tuple(json.loads(name)): value.decode() for name, value in raw.items()}


def test_each_call_is_counted_by_upstream_model_and_outcome(redis_url: str) -> None:
    record(redis_url, (0.2, "ok"), (0.3, "ok"), (0.01, "rate_limited"), (None, "failed"))

    assert read(redis_url, METRICS_CALLS_KEY) == {
        (UPSTREAM, MODEL, "ok"): "2",
        (UPSTREAM, MODEL, "rate_limited"): "1",
        (UPSTREAM, MODEL, "failed"): "1",
    }
    assert read(redis_url, METRICS_RATE_LIMITED_KEY) == {(UPSTREAM, MODEL): "1"}


def test_a_timed_call_lands_in_the_one_bucket_its_latency_falls_in(redis_url: str) -> None:
    record(redis_url, (0.05, "ok"), (0.2, "ok"), (0.25, "overloaded"), (3.0, "ok"), (900, "ok"))

    assert read(redis_url, METRICS_LATENCY_BUCKETS_KEY) == {
        (UPSTREAM, MODEL, "0.05"): "1",  # a bound belongs to its bucket (`le`)
        (UPSTREAM, MODEL, "0.25"): "2",
        (UPSTREAM, MODEL, "5.0"): "1",
        (UPSTREAM, MODEL, "+Inf"): "1",
    }
    (total_s,) = read(redis_url, METRICS_LATENCY_SUM_KEY).values()
    assert float(total_s) == pytest.approx(903.5)


def test_a_call_without_a_latency_is_counted_but_not_timed(redis_url: str) -> None:
    record(redis_url, (None, "failed"))

    assert read(redis_url, METRICS_CALLS_KEY) == {(UPSTREAM, MODEL, "failed"): "1"}
    assert read(redis_url, METRICS_LATENCY_BUCKETS_KEY) == {}
    assert read(redis_url, METRICS_LATENCY_SUM_KEY) == {}


def test_bucket_bounds_follow_the_histograms_le_semantics() -> None:
    assert [bucket_bound(s) for s in (0.0, 0.05, 0.051, 300.0, 300.1)] == [
        "0.05",
        "0.05",
        "0.1",
        "300.0",
        "+Inf",
    ]


def test_an_unreachable_redis_costs_a_warning_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = f"redis://127.0.0.1:{free_tcp_port()}/0"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="worker.telemetry"):
        record(closed, (0.2, "ok"), (None, "rate_limited"))

    assert time.monotonic() - started < 10
    assert len([r for r in caplog.records if "could not record" in r.getMessage()]) == 2


def test_counts_kept_in_memory_reach_redis_in_one_flush_and_survive_a_failed_one(
    redis_url: str,
) -> None:
    async def body() -> None:
        counter = CallCounter()
        for latency_s, outcome in ((0.2, "ok"), (0.3, "ok"), (None, "rate_limited")):
            counter.observe(UPSTREAM, MODEL, latency_s, outcome)
        down = Redis.from_url(f"redis://127.0.0.1:{free_tcp_port()}/0")  # nothing listens
        try:
            await counter.flush(down)
        finally:
            await down.aclose()
        assert counter  # kept for the next flush
        redis = Redis.from_url(redis_url)
        try:
            await counter.flush(redis)
            assert not counter
            calls = await redis.hgetall(METRICS_CALLS_KEY)
            assert calls[label_field(UPSTREAM, MODEL, "ok").encode()] == b"2"
            assert calls[label_field(UPSTREAM, MODEL, "rate_limited").encode()] == b"1"
        finally:
            await redis.aclose()

    asyncio.run(body())
