"""Limits across a fleet: three real `promptq worker` processes share one budget."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import Workers, promptq, submit_and_wait, wait_for


def write(path: Path, count: int, extra: dict[int, str] | None = None) -> Path:
    extra = extra or {}
    with path.open("w") as f:
        for i in range(count):
            prompt = f"item {i} {extra.get(i, '')}".strip()
            body = {"model": "o1-mini-2024-09-12", "input": prompt}
            if extra.get(i) == "reject":
                body = {**body, "input": f"item {i}", "temperature": 1}
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": body}
            f.write(json.dumps(line) + "\n")
    return path


@pytest.fixture
def cluster(
    tmp_path: Path, simulator: Any, redis_url: str, postgres_server: Any
) -> Iterator[tuple[dict[str, str], Any]]:
    env = {
        "PROMPTQ_UPSTREAM_BASE_URL": simulator.base_url,
        "COMETAPI_API_KEY": simulator.key,
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
        "PROMPTQ_REDIS_URL": redis_url,
        "PROMPTQ_DATABASE_URL": postgres_server.create_database(f"c{time.time_ns()}"),
        "PROMPTQ_SWEEP_INTERVAL_S": "0.5",
    }
    assert promptq("db", "upgrade", env=env).returncode == 0
    yield env, simulator


def start(env: dict[str, str], tmp_path: Path, count: int = 3) -> Workers:
    return Workers(env, tmp_path / "logs").start(count)


def test_three_workers_never_exceed_the_shared_concurrency_cap(
    cluster: tuple[dict[str, str], Any], tmp_path: Path
) -> None:
    env, sim = cluster
    env["PROMPTQ_MAX_CONCURRENCY"] = "16"
    sim.configure(latency_ms=200)
    workers = start(env, tmp_path)
    try:
        batch = submit_and_wait(write(tmp_path / "in.jsonl", 400), env, workers)
    finally:
        workers.stop()
    assert batch["request_counts"] == {"total": 400, "completed": 400, "failed": 0}
    stats = sim.stats()
    assert stats["max_in_flight"] == 16  # reached, never passed
    # utilisation against the ideal is a benchmark figure (bench/limits.py), not asserted here
    print("busy ratio", stats["work_s"] / (16 * stats["busy_s"]))


def test_the_requests_per_minute_budget_holds_in_every_window_across_workers(
    cluster: tuple[dict[str, str], Any], tmp_path: Path
) -> None:
    env, sim = cluster
    env["PROMPTQ_RPM"] = "600"
    workers = start(env, tmp_path)
    try:
        batch = submit_and_wait(write(tmp_path / "in.jsonl", 700), env, workers, timeout_s=150)
    finally:
        workers.stop()
    assert batch["request_counts"]["completed"] == 700
    starts = sorted(entry["t_start"] for entry in sim.log())
    assert len(starts) == 700
    busiest = max(sum(1 for t in starts[i:] if t < first + 60.0) for i, first in enumerate(starts))
    assert busiest <= 600
    assert starts[-1] - starts[0] >= 59.0  # the last 100 waited for the window to move


def test_a_429_storm_pauses_the_whole_cluster_then_everything_finishes(
    cluster: tuple[dict[str, str], Any], tmp_path: Path
) -> None:
    env, sim = cluster
    sim.configure(latency_ms=100, retry_after_s=2)
    workers = start(env, tmp_path)
    storm: dict[str, float] = {}

    def start_storm() -> None:
        wait_for(lambda: sim.stats()["requests_total"] >= 100, 60, "the batch to be running")
        storm["from"] = time.time()
        sim.configure(rate_limit_for_s=5)
        storm["until"] = storm["from"] + 5

    trigger = threading.Thread(target=start_storm)
    trigger.start()
    try:
        batch = submit_and_wait(write(tmp_path / "in.jsonl", 800), env, workers, timeout_s=120)
    finally:
        trigger.join()
        workers.stop()
    assert batch["request_counts"] == {"total": 800, "completed": 800, "failed": 0}
    log = sim.log()
    first_429 = min(e["t_start"] for e in log if e["status"] == 429)
    # after the first 429 has been seen (a little grace for calls already on their way),
    # only probes: one per worker per pause (two pauses of 2 s fit in a 5 s storm, plus one)
    during = [e for e in log if first_429 + 0.25 < e["t_start"] < storm["until"]]
    assert len(during) <= 3 * 3, during


def test_transient_failures_are_retried_and_refusals_sent_once(
    cluster: tuple[dict[str, str], Any], tmp_path: Path
) -> None:
    env, sim = cluster
    env["PROMPTQ_REQUEST_TIMEOUT_S"] = "1"
    sim.configure(hang_s=3, retry_after_s=0.2)
    kinds = ["500", "503", "429", "reset", "malformed", "hang"]
    extra = {i: f"#sim:fail={kinds[i % 6]}*2" for i in range(0, 300, 7)}  # ~15%
    extra.update({i: "reject" for i in range(3, 300, 50)})
    workers = start(env, tmp_path)
    try:
        batch = submit_and_wait(write(tmp_path / "in.jsonl", 300, extra), env, workers)
    finally:
        workers.stop()
    rejected = len([v for v in extra.values() if v == "reject"])
    assert batch["request_counts"] == {
        "total": 300,
        "completed": 300 - rejected,
        "failed": rejected,
    }
    refused = [e for e in sim.log() if e["status"] == 400]
    assert len(refused) == rejected
    assert len({e["body_sha"] for e in refused}) == rejected
    assert workers.errors() == []
