"""The fleet as Prometheus sees it: `GET /metrics`, read afresh from the database and Redis.

Every scrape builds its own registry around one collector fed by a snapshot, so nothing
is kept between scrapes and several API processes answer alike. Request and batch
counts and token usage come from the database (a scrape the database cannot answer is a
503); call counts, latencies and 429s are what the workers wrote to Redis
(worker/telemetry.py), and the shared limits come from jobs.fleet. With Redis away the
database's metrics are still served, beside `promptq_redis_up 0`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col
from starlette.responses import Response

from jobs.constants import (
    LATENCY_BUCKETS_S,
    METRICS_CALLS_KEY,
    METRICS_LATENCY_BUCKETS_KEY,
    METRICS_LATENCY_SUM_KEY,
    METRICS_RATE_LIMITED_KEY,
)
from jobs.db import read_scope
from jobs.errors import ServiceError
from jobs.models import Batch, BatchStatus, Request, RequestStatus
from jobs.settings import Settings, get_settings

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0
# token kind (the `kind` label) -> the usage column it is summed from
TOKEN_COLUMNS = {
    "input": "input_tokens",
    "cached_input": "cached_input_tokens",
    "output": "output_tokens",
    "reasoning": "reasoning_tokens",
}

Series = tuple[str, ...]


@dataclass
class Snapshot:
    """What one scrape read: counts and usage from the database, telemetry from Redis."""

    requests: dict[str, int]
    batches: dict[str, int]
    usage: dict[str, dict[str, float]]  # model -> usage column -> sum
    redis_up: bool = False
    calls: dict[Series, int] = field(default_factory=dict)  # (upstream, model, outcome)
    rate_limited: dict[Series, int] = field(default_factory=dict)  # (upstream, model)
    latency_buckets: dict[Series, int] = field(default_factory=dict)  # (upstream, model, le)
    latency_sum_s: dict[Series, float] = field(default_factory=dict)  # (upstream, model)
    limits: dict[str, Any] | None = None  # jobs.fleet.limits_view


def scrape() -> Response:
    """`GET /metrics`: the fleet now, in Prometheus' text exposition format."""
    return Response(render(), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(read_snapshot(get_settings())))
    return generate_latest(registry)


def read_snapshot(settings: Settings) -> Snapshot:
    try:
        snapshot = _read_database()
    except SQLAlchemyError as exc:
        raise ServiceError(f"the database is unreachable: {type(exc).__name__}") from exc
    url = redis_url(settings)
    if url is None:
        return snapshot
    try:
        _read_redis(snapshot, settings, url)
    except (redis.RedisError, OSError) as exc:
        log.warning("metrics: Redis is unreachable: %s", exc)
    return snapshot


def redis_url(settings: Settings) -> str | None:
    """PROMPTQ_REDIS_URL, or the embedded Redis if it runs: a scrape never starts one."""
    if settings.redis_url:
        return settings.redis_url
    from jobs.embedded import EmbeddedRedis

    embedded = EmbeddedRedis(settings.resolved_data_dir)
    return embedded.url if embedded.is_running() else None


def _read_database() -> Snapshot:
    usage_columns = [*TOKEN_COLUMNS.values(), "cost_usd"]
    sums = [func.coalesce(func.sum(getattr(Request, name)), 0) for name in usage_columns]
    requests, batches, model = col(Request.status), col(Batch.status), col(Request.model)
    with read_scope() as session:
        by_state = session.execute(select(requests, func.count()).group_by(requests)).all()
        by_status = session.execute(select(batches, func.count()).group_by(batches)).all()
        usage = session.execute(select(model, *sums).group_by(model)).all()
        return Snapshot(
            requests={s.value: 0 for s in RequestStatus} | {row[0]: row[1] for row in by_state},
            batches={s.value: 0 for s in BatchStatus} | {row[0]: row[1] for row in by_status},
            usage={
                row[0]: dict(zip(usage_columns, map(float, row[1:]), strict=True)) for row in usage
            },
        )


def _read_redis(snapshot: Snapshot, settings: Settings, url: str) -> None:
    from jobs.fleet import limits_view

    client = redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    try:
        pipe = client.pipeline(transaction=True)  # one consistent read of every hash
        for key in (
            METRICS_CALLS_KEY,
            METRICS_RATE_LIMITED_KEY,
            METRICS_LATENCY_BUCKETS_KEY,
            METRICS_LATENCY_SUM_KEY,
        ):
            pipe.hgetall(key)
        calls, limited, buckets, sums = pipe.execute()
    finally:
        client.close()
    snapshot.limits = limits_view(settings, url)
    snapshot.calls = _series(calls, 3, int)
    snapshot.rate_limited = _series(limited, 2, int)
    snapshot.latency_buckets = _series(buckets, 3, int)
    snapshot.latency_sum_s = _series(sums, 2, float)
    snapshot.redis_up = True


def _series(raw: dict[bytes, bytes], arity: int, kind: type[Any]) -> dict[Series, Any]:
    """A telemetry HASH as {label values: number}; a field not written by us is skipped."""
    parsed: dict[Series, Any] = {}
    for name, value in raw.items():
        try:
            labels = json.loads(name)
            number = kind(value.decode())
        except ValueError:
            continue
        if isinstance(labels, list) and len(labels) == arity:
            parsed[tuple(str(label) for label in labels)] = number
    return parsed


class FleetCollector:
    """A prometheus_client collector over one snapshot (no `describe`: collected once)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        requests = GaugeMetricFamily(
            "promptq_requests", "Requests in the database by state.", labels=["state"]
        )
        for state, count in sorted(s.requests.items()):
            requests.add_metric([state], count)
        yield requests
        batches = GaugeMetricFamily(
            "promptq_batches", "Batches (and jobs) in the database by status.", labels=["status"]
        )
        for status, count in sorted(s.batches.items()):
            batches.add_metric([status], count)
        yield batches
        yield from self._usage()
        yield GaugeMetricFamily(
            "promptq_redis_up", "Whether Redis answered this scrape.", value=int(s.redis_up)
        )
        if s.redis_up:
            yield from self._calls()
            yield self._latency()
        if s.limits is not None:
            yield from self._limits(s.limits)

    def _usage(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "promptq_tokens",
            "Tokens spent, summed from the stored usage of every request.",
            labels=["kind", "model"],
        )
        cost = CounterMetricFamily(
            "promptq_cost_usd", "Cost spent in USD, summed per request.", labels=["model"]
        )
        for model, sums in sorted(self.snapshot.usage.items()):
            for kind, column in TOKEN_COLUMNS.items():
                tokens.add_metric([kind, model], sums[column])
            cost.add_metric([model], sums["cost_usd"])
        yield tokens
        yield cost

    def _calls(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "promptq_upstream_calls",
            "Upstream calls by outcome (ok, rate_limited, overloaded, failed).",
            labels=["upstream", "model", "outcome"],
        )
        for labels, count in sorted(self.snapshot.calls.items()):
            calls.add_metric(list(labels), count)
        yield calls
        limited = CounterMetricFamily(
            "promptq_rate_limited", "Upstream answers 429.", labels=["upstream", "model"]
        )
        for labels, count in sorted(self.snapshot.rate_limited.items()):
            limited.add_metric(list(labels), count)
        yield limited

    def _latency(self) -> Metric:
        histogram = HistogramMetricFamily(
            "promptq_upstream_latency_seconds",
            "Latency of upstream calls that were answered.",
            labels=["upstream", "model"],
        )
        # per-bucket counts, keyed by each bucket's upper bound, are made cumulative here
        per_bucket: dict[Series, list[tuple[float, int]]] = {}
        for (upstream, model, le), count in self.snapshot.latency_buckets.items():
            try:
                bound = float(le)
            except ValueError:
                continue
            per_bucket.setdefault((upstream, model), []).append((bound, count))
        for series in sorted(per_bucket.keys() | self.snapshot.latency_sum_s.keys()):
            counts = per_bucket.get(series, [])
            buckets = [
                (floatToGoString(le), sum(n for bound, n in counts if bound <= le))
                for le in LATENCY_BUCKETS_S
            ]
            buckets.append(("+Inf", sum(n for _, n in counts)))
            histogram.add_metric(
                list(series), buckets, self.snapshot.latency_sum_s.get(series, 0.0)
            )
        return histogram

    def _limits(self, view: dict[str, Any]) -> Iterator[Metric]:
        upstream = [view["upstream"]]
        for name, key, doc in (
            ("promptq_in_flight", "in_flight", "Upstream calls in flight across the fleet."),
            (
                "promptq_effective_concurrency",
                "effective_concurrency",
                "The adaptive concurrency limit now in force.",
            ),
            ("promptq_max_concurrency", "max_concurrency", "The configured concurrency cap."),
            ("promptq_paused_seconds", "paused_for_s", "Seconds left of a pause after a 429."),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["upstream"])
            gauge.add_metric(upstream, float(view[key]))
            yield gauge
        # a model with a cap of its own (PROMPTQ_MODEL_LIMITS) is limited apart, inside these
        for name, key, doc in (
            (
                "promptq_model_in_flight",
                "in_flight",
                "Calls in flight to a model with its own cap.",
            ),
            (
                "promptq_model_effective_concurrency",
                "effective_concurrency",
                "The adaptive limit in force for a model with its own cap.",
            ),
            ("promptq_model_max_concurrency", "max_concurrency", "A model's own concurrency cap."),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["upstream", "model"])
            for model in view.get("models", []):
                gauge.add_metric([*upstream, model["model"]], float(model[key]))
            yield gauge
