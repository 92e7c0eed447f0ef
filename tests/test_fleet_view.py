"""The fleet seen from outside, on real parts: `/metrics` after a batch ran through real
workers, read by Prometheus' own text parser, agrees with the database and `promptq usage`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.apiserver import ApiServer
from tests.deploy import deployment_env, promptq, wait_for

MODEL = "o1-mini-2024-09-12"
KINDS = {
    "input": "input_tokens",
    "cached_input": "cached_input_tokens",
    "output": "output_tokens",
    "reasoning": "reasoning_tokens",
}


def _scrape(server: ApiServer) -> dict[str, list[Any]]:
    answer = httpx.get(server.root_url + "/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_after_a_batch_agree_with_the_stored_usage_and_the_calls_made(
    tmp_path: Path, simulator: Any, redis_url: str
) -> None:
    env = deployment_env(tmp_path, simulator, redis_url, PROMPTQ_MAX_CONCURRENCY="6")
    with (tmp_path / "in.jsonl").open("w") as f:
        for i in range(30):
            prompt = f"Classify ticket {i}." + (" #sim:fail=429*1" if i == 0 else "")
            body = {"model": MODEL, "input": prompt}
            line = {"custom_id": f"t{i}", "method": "POST", "url": "/v1/responses", "body": body}
            f.write(json.dumps(line) + "\n")
    server = ApiServer(env, tmp_path / "logs").start(workers=1)
    try:
        submitted = promptq("submit", str(tmp_path / "in.jsonl"), "--wait", env=env)
        assert submitted.returncode == 0, submitted.stderr
        # the calls' counts are written just after each answer is stored: wait for the last
        wait_for(
            lambda: _value(_scrape(server), "promptq_upstream_calls_total") == 31,
            30,
            "31 upstream calls (30 answers and one 429) to be counted",
        )
        samples = _scrape(server)
        usage = promptq("usage", "--by", "model", "--json", env=env)
    finally:
        server.stop()

    upstream = simulator.base_url.split("//", 1)[1].split("/", 1)[0]
    assert _value(samples, "promptq_redis_up") == 1
    assert _value(samples, "promptq_requests", state="succeeded") == 30
    assert _value(samples, "promptq_requests", state="queued") == 0
    assert _value(samples, "promptq_batches", status="completed") == 1
    calls = {"upstream": upstream, "model": MODEL}
    assert _value(samples, "promptq_upstream_calls_total", outcome="ok", **calls) == 30
    assert _value(samples, "promptq_upstream_calls_total", outcome="rate_limited", **calls) == 1
    assert _value(samples, "promptq_rate_limited_total", **calls) == 1
    assert _value(samples, "promptq_max_concurrency", upstream=upstream) == 6

    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in samples["promptq_upstream_latency_seconds_bucket"]
        if s.labels["model"] == MODEL
    )
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)  # cumulative
    assert buckets[-1] == (float("inf"), 31)
    assert _value(samples, "promptq_upstream_latency_seconds_count", **calls) == 31
    assert _value(samples, "promptq_upstream_latency_seconds_sum", **calls) > 0

    db = sqlite3.connect(tmp_path / "data" / "promptq.db")
    for kind, column in KINDS.items():
        (stored,) = db.execute(f"SELECT sum({column}) FROM requests").fetchone()
        assert _value(samples, "promptq_tokens_total", kind=kind, model=MODEL) == stored
    (cost,) = db.execute("SELECT sum(cost_usd) FROM requests").fetchone()
    assert abs(_value(samples, "promptq_cost_usd_total", model=MODEL) - cost) < 1e-9
    assert usage.returncode == 0, usage.stderr
    (row,) = json.loads(usage.stdout)
    assert abs(row["cost_usd"] - cost) < 1e-9


def test_workers_send_the_task_events_flower_reads(
    tmp_path: Path, simulator: Any, redis_url: str, monkeypatch: Any
) -> None:
    import threading

    from jobs.queue import get_celery
    from tests.deploy import Workers, apply_env
    from tests.test_pipeline import write_batch

    env = deployment_env(tmp_path, simulator, redis_url)
    apply_env(monkeypatch, env)
    app = get_celery()
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        # what Flower does: a receiver on the events exchange, catching every event type
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})
        listening = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True
        )
        listening.start()
        write_batch(tmp_path / "in.jsonl", 20)
        workers = Workers(env, tmp_path / "logs").start(1)
        try:
            done = promptq("submit", str(tmp_path / "in.jsonl"), "--wait", env=env)
            assert done.returncode == 0, done.stderr

            def finished_tasks() -> int:
                return sum(e["type"] == "task-succeeded" for e in list(seen))

            wait_for(lambda: finished_tasks() >= 2, 30, "task-succeeded events (20 ids, 16 a task)")
        finally:
            receiver.should_stop = True
            workers.stop()
    types = {e["type"] for e in seen}
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= types
    assert {e.get("name") for e in seen if e["type"] == "task-received"} == {"promptq.execute"}
