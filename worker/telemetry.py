"""Upstream call telemetry in Redis, shared by the fleet and read by the API's `/metrics`.

Each call adds to HASHes keyed in jobs.constants (fields are JSON label lists): its
outcome's count, a 429 count, and for a timed call its latency bucket and the latency
sum. Buckets are counted on their own, not cumulatively (one HINCRBY per call); the
reader adds them up, and their total is the histogram's count, so `+Inf == count`
holds in every scrape.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging

from redis.asyncio import Redis

from jobs.constants import (
    CALL_OUTCOMES,
    LATENCY_BUCKETS_S,
    METRICS_CALLS_KEY,
    METRICS_LATENCY_BUCKETS_KEY,
    METRICS_LATENCY_SUM_KEY,
    METRICS_RATE_LIMITED_KEY,
)

log = logging.getLogger(__name__)

# Telemetry must never hold up a call's result for long, even when Redis is slow.
RECORD_TIMEOUT_S = 2.0
INF_BUCKET = "+Inf"


def label_field(*labels: str) -> str:
    """A HASH field naming one series: its label values as a JSON list."""
    return json.dumps(labels, separators=(",", ":"))


def bucket_bound(latency_s: float) -> str:
    """The upper bound of the one bucket this latency falls in (`le` semantics)."""
    index = bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)
    return repr(LATENCY_BUCKETS_S[index]) if index < len(LATENCY_BUCKETS_S) else INF_BUCKET


async def record_call(
    redis: Redis, upstream: str, model: str, latency_s: float | None, outcome: str
) -> None:
    """Count one upstream call, in one round trip; logs and returns on any Redis error.

    `outcome` is one of CALL_OUTCOMES; `latency_s` is None for a call that got no answer
    to time (it is counted, but not in the latency histogram).
    """
    if outcome not in CALL_OUTCOMES:
        log.warning("telemetry: unknown call outcome %r (recorded as given)", outcome)
    try:
        async with asyncio.timeout(RECORD_TIMEOUT_S):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.hincrby(METRICS_CALLS_KEY, label_field(upstream, model, outcome), 1)
                if outcome == "rate_limited":
                    pipe.hincrby(METRICS_RATE_LIMITED_KEY, label_field(upstream, model), 1)
                if latency_s is not None:
                    latency_s = max(0.0, latency_s)
                    series = label_field(upstream, model, bucket_bound(latency_s))
                    pipe.hincrby(METRICS_LATENCY_BUCKETS_KEY, series, 1)
                    pipe.hincrbyfloat(
                        METRICS_LATENCY_SUM_KEY, label_field(upstream, model), latency_s
                    )
                await pipe.execute()
    except Exception as exc:  # noqa: BLE001 - a lost sample must never cost a request
        log.warning("telemetry: could not record a call to %s (%s): %r", upstream, model, exc)
