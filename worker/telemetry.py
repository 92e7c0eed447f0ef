"""Upstream call telemetry in Redis, shared by the fleet and read by the API's `/metrics`.

Each call adds to HASHes keyed in jobs.constants (fields are JSON label lists): its
outcome's count, a 429 count, and for a timed call its latency bucket and the latency
sum. A worker counts in memory and flushes once a second (CallCounter). Buckets are
counted on their own, not cumulatively; the reader adds them up, and their total is the
histogram's count, so `+Inf == count` holds in every scrape.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections import Counter, defaultdict

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


class CallCounter:
    """A process's call counts since its last flush: a call costs a few dict updates, and
    one pipeline a second carries them all to Redis (per-call writes cost a round trip
    and about a millisecond of CPU each, see bench/)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.calls: Counter[tuple[str, ...]] = Counter()  # (upstream, model, outcome)
        self.rate_limited: Counter[tuple[str, ...]] = Counter()  # (upstream, model)
        self.buckets: Counter[tuple[str, ...]] = Counter()  # (upstream, model, le)
        self.latency_sum_s: defaultdict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, upstream: str, model: str, latency_s: float | None, outcome: str) -> None:
        """Count one call; `latency_s` None: counted, but not in the latency histogram."""
        if outcome not in CALL_OUTCOMES:
            log.warning("telemetry: unknown call outcome %r (recorded as given)", outcome)
        self.calls[upstream, model, outcome] += 1
        if outcome == "rate_limited":
            self.rate_limited[upstream, model] += 1
        if latency_s is not None:
            latency_s = max(0.0, latency_s)
            self.buckets[upstream, model, bucket_bound(latency_s)] += 1
            self.latency_sum_s[upstream, model] += latency_s

    def __bool__(self) -> bool:
        return bool(self.calls)

    async def flush(self, redis: Redis) -> None:
        """Add what was counted to the fleet's HASHes in one round trip, and start over.

        On a Redis error the counts are kept for the next flush: nothing is lost, only late.
        """
        if not self:
            return
        taken = (self.calls, self.rate_limited, self.buckets, self.latency_sum_s)
        self._reset()  # counting goes on while the pipeline runs
        calls, rate_limited, buckets, sums = taken
        try:
            async with asyncio.timeout(RECORD_TIMEOUT_S):
                async with redis.pipeline(transaction=False) as pipe:
                    for fields, n in calls.items():
                        pipe.hincrby(METRICS_CALLS_KEY, label_field(*fields), n)
                    for fields, n in rate_limited.items():
                        pipe.hincrby(METRICS_RATE_LIMITED_KEY, label_field(*fields), n)
                    for fields, n in buckets.items():
                        pipe.hincrby(METRICS_LATENCY_BUCKETS_KEY, label_field(*fields), n)
                    for fields, total_s in sums.items():
                        pipe.hincrbyfloat(METRICS_LATENCY_SUM_KEY, label_field(*fields), total_s)
                    await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - a late sample must never cost a request
            log.warning(
                "telemetry: could not record %d calls (%r); will retry", sum(calls.values()), exc
            )
            self.calls.update(calls)
            self.rate_limited.update(rate_limited)
            self.buckets.update(buckets)
            for fields, total_s in sums.items():
                self.latency_sum_s[fields] += total_s


async def record_call(
    redis: Redis, upstream: str, model: str, latency_s: float | None, outcome: str
) -> None:
    """Count one upstream call at once, in one round trip; logs and returns on any error.

    `outcome` is one of CALL_OUTCOMES; `latency_s` is None for a call that got no answer
    to time (it is counted, but not in the latency histogram).
    """
    counter = CallCounter()
    counter.observe(upstream, model, latency_s, outcome)
    await counter.flush(redis)
