"""`GET /metrics` of a running `promptq api`: the database's counts and usage, the workers'
call telemetry in Redis, and the fleet's limits, as Prometheus parses them."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from jobs.api.app import create_app
from jobs.constants import ADAPTIVE_KEY, CONCURRENCY_KEY, PAUSE_KEY
from jobs.db import session_scope
from jobs.models import Batch, Request
from tests.apiserver import ApiServer
from tests.deploy import apply_env, reset_caches
from tests.services import free_tcp_port
from worker.telemetry import record_call

UPSTREAM = "api.cometapi.com"  # the API's default upstream: its limits are the ones shown
MODEL = "o1-mini-2024-09-12"
OTHER_MODEL = "gpt-4o-mini"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def store_requests() -> None:
    """Two batches whose requests stand in every state; the succeeded ones carry usage."""
    with session_scope() as session:
        done = Batch(endpoint="/v1/responses", status="completed")
        running = Batch(endpoint="/v1/responses", status="in_progress")
        session.add_all([done, running])
        session.flush()
        rows = [
            (done, MODEL, "succeeded"),
            (done, MODEL, "succeeded"),
            (done, OTHER_MODEL, "succeeded"),
            (done, MODEL, "failed"),
            (running, OTHER_MODEL, "queued"),
            (running, OTHER_MODEL, "queued"),
            (running, MODEL, "running"),
            (running, MODEL, "cancelled"),
        ]
        for line, (batch, model, status) in enumerate(rows, start=1):
            usage = (
                {
                    "input_tokens": 100,
                    "cached_input_tokens": 40,
                    "output_tokens": 30,
                    "reasoning_tokens": 20,
                    "total_tokens": 130,
                    "cost_usd": 0.25,
                }
                if status == "succeeded"
                else {}
            )
            session.add(
                Request(
                    id=f"req_{batch.id}_{line}",
                    batch_id=batch.id,
                    line=line,
                    custom_id=f"c{line}",
                    url="/v1/responses",
                    model=model,
                    body="{}",
                    status=status,
                    **usage,
                )
            )


def record_calls(redis_url: str, calls: list[tuple[str, float | None, str]]) -> None:
    async def main() -> None:
        redis = Redis.from_url(redis_url)
        try:
            for model, latency_s, outcome in calls:
                await record_call(redis, UPSTREAM, model, latency_s, outcome)
        finally:
            await redis.aclose()

    asyncio.run(main())


def start_api(tmp_path: Path, redis_url: str) -> ApiServer:
    """`promptq api` alone (no workers) on the test's database (set by the `db` fixture)."""
    env = {
        "PROMPTQ_REDIS_URL": redis_url,
        "PROMPTQ_MAX_CONCURRENCY": "7",
        "PROMPTQ_MODEL_LIMITS": json.dumps({MODEL: {"max_concurrency": 3}}),
    }
    return ApiServer(env, tmp_path / "logs").start(workers=0)


@pytest.fixture
def api(db: str, redis_url: str, tmp_path: Path) -> Iterator[ApiServer]:
    with start_api(tmp_path, redis_url) as server:
        yield server


def test_metrics_count_requests_batches_and_tokens_from_the_database(api: ApiServer) -> None:
    store_requests()

    answer = httpx.get(api.root_url + "/metrics", timeout=30)

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples = parse(answer.text)
    states = {"queued": 2, "running": 1, "succeeded": 3, "failed": 1, "cancelled": 1}
    for state in ("queued", "running", "succeeded", "failed", "cancelled", "expired"):
        assert value(samples, "promptq_requests", state=state) == states.get(state, 0)
    assert value(samples, "promptq_batches", status="completed") == 1
    assert value(samples, "promptq_batches", status="in_progress") == 1
    assert value(samples, "promptq_batches", status="cancelled") == 0
    per_request = {"input": 100, "cached_input": 40, "output": 30, "reasoning": 20}
    for kind, tokens in per_request.items():
        assert value(samples, "promptq_tokens_total", kind=kind, model=MODEL) == 2 * tokens
        assert value(samples, "promptq_tokens_total", kind=kind, model=OTHER_MODEL) == tokens
    assert value(samples, "promptq_cost_usd_total", model=MODEL) == pytest.approx(0.5)
    assert value(samples, "promptq_cost_usd_total", model=OTHER_MODEL) == pytest.approx(0.25)


def test_metrics_show_the_calls_latencies_and_429s_the_workers_recorded(
    api: ApiServer, redis_url: str
) -> None:
    record_calls(
        redis_url,
        [
            (MODEL, 0.2, "ok"),
            (MODEL, 0.3, "ok"),
            (MODEL, 1.5, "ok"),
            (MODEL, 0.01, "rate_limited"),
            (MODEL, 0.02, "rate_limited"),
            (MODEL, 40.0, "overloaded"),
            (MODEL, None, "failed"),
            (OTHER_MODEL, 400.0, "ok"),
        ],
    )

    samples = parse(httpx.get(api.root_url + "/metrics", timeout=30).text)

    assert value(samples, "promptq_redis_up") == 1
    calls = {"ok": 3, "rate_limited": 2, "overloaded": 1, "failed": 1}
    for outcome, count in calls.items():
        labels = {"upstream": UPSTREAM, "model": MODEL, "outcome": outcome}
        assert value(samples, "promptq_upstream_calls_total", **labels) == count
    assert value(samples, "promptq_rate_limited_total", upstream=UPSTREAM, model=MODEL) == 2
    series = {"upstream": UPSTREAM, "model": MODEL}
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in samples.items()
        if name == "promptq_upstream_latency_seconds_bucket"
        and dict(labels).items() >= series.items()
    )
    counts = [count for _, count in buckets]
    assert counts == sorted(counts), "cumulative buckets never decrease"
    assert dict(buckets)[0.05] == 2  # the two 429s
    assert dict(buckets)[0.25] == 3
    assert dict(buckets)[2.5] == 5
    assert dict(buckets)[30.0] == 5
    assert dict(buckets)[60.0] == 6
    assert buckets[-1] == (float("inf"), 6)  # the failed call had no latency
    assert value(samples, "promptq_upstream_latency_seconds_count", **series) == 6
    assert value(samples, "promptq_upstream_latency_seconds_sum", **series) == pytest.approx(42.03)
    other = {"upstream": UPSTREAM, "model": OTHER_MODEL}
    assert value(samples, "promptq_upstream_latency_seconds_bucket", le="300.0", **other) == 0
    assert value(samples, "promptq_upstream_latency_seconds_bucket", le="+Inf", **other) == 1


def test_metrics_show_the_fleets_shared_limits_per_upstream(api: ApiServer, redis_url: str) -> None:
    now_ms = int(time.time() * 1000)
    with SyncRedis.from_url(redis_url) as client:
        client.zadd(CONCURRENCY_KEY + UPSTREAM, {"a": now_ms + 60_000, "b": now_ms + 60_000})
        client.set(ADAPTIVE_KEY + UPSTREAM, "3.5")
        client.set(PAUSE_KEY + UPSTREAM, now_ms + 30_000)

    samples = parse(httpx.get(api.root_url + "/metrics", timeout=30).text)

    assert value(samples, "promptq_in_flight", upstream=UPSTREAM) == 2
    assert value(samples, "promptq_effective_concurrency", upstream=UPSTREAM) == 3.5
    assert value(samples, "promptq_max_concurrency", upstream=UPSTREAM) == 7
    assert 20 < value(samples, "promptq_paused_seconds", upstream=UPSTREAM) <= 30


def test_metrics_show_a_model_with_a_cap_of_its_own_apart(api: ApiServer, redis_url: str) -> None:
    now_ms = int(time.time() * 1000)
    scope = f"{UPSTREAM}|{MODEL}"
    with SyncRedis.from_url(redis_url) as client:
        client.zadd(CONCURRENCY_KEY + scope, {"a": now_ms + 60_000, "old": now_ms - 1})
        client.set(ADAPTIVE_KEY + scope, "2.2")

    samples = parse(httpx.get(api.root_url + "/metrics", timeout=30).text)

    labels = {"upstream": UPSTREAM, "model": MODEL}
    assert value(samples, "promptq_model_in_flight", **labels) == 1  # the expired lease is not
    assert value(samples, "promptq_model_effective_concurrency", **labels) == 2.2
    assert value(samples, "promptq_model_max_concurrency", **labels) == 3
    capped = {dict(labels)["model"] for name, labels in samples if name.startswith("promptq_model")}
    assert capped == {MODEL}  # a model without a cap of its own shares the upstream's


def test_with_redis_down_the_database_metrics_are_still_served(db: str, tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_tcp_port()}/0"
    store_requests()

    with start_api(tmp_path, closed) as api:
        answer = httpx.get(api.root_url + "/metrics", timeout=30)

    assert answer.status_code == 200, answer.text
    samples = parse(answer.text)
    assert value(samples, "promptq_redis_up") == 0
    assert value(samples, "promptq_requests", state="succeeded") == 3
    assert not any(name.startswith("promptq_upstream") for name, _ in samples)
    assert not any(name == "promptq_in_flight" for name, _ in samples)


def test_an_embedded_redis_that_is_not_running_is_down_and_is_not_started(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMPTQ_REDIS_URL", raising=False)
    reset_caches()

    with TestClient(create_app()) as client:
        answer = client.get("/metrics")

    assert answer.status_code == 200, answer.text
    assert value(parse(answer.text), "promptq_redis_up") == 0
    data_dir = Path(os.environ["PROMPTQ_DATA_DIR"])
    assert not list(data_dir.glob("redis.*")), "a scrape started the embedded Redis"


def test_with_the_database_down_the_scrape_is_answered_503(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    down = f"postgresql+psycopg://promptq@127.0.0.1:{free_tcp_port()}/promptq"
    apply_env(monkeypatch, {"PROMPTQ_DATABASE_URL": down, "PROMPTQ_DATA_DIR": str(tmp_path)})
    try:
        with TestClient(create_app()) as client:
            answer = client.get("/metrics")
    finally:
        reset_caches()

    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "server_error"
