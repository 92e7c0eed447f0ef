"""A batch's policy on real parts: budgets, priority, a daily window and reuse of results.

Real `promptq` and `promptq worker` processes, a real Redis, SQLite, and the simulator as
the upstream. Assertions are about order and accounting, never about speed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.deploy import Workers, deployment_env, promptq, submit_and_wait, wait_for
from tests.test_pipeline import read_jsonl, write_batch

MODEL = "o1-mini-2024-09-12"


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "data" / "promptq.db")


def _submit(path: Path, env: dict[str, str], *options: str) -> str:
    submitted = promptq("submit", str(path), *options, env=env)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().splitlines()[-1]


def _status(batch_id: str, env: dict[str, str]) -> dict[str, Any]:
    shown = promptq("status", batch_id, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def _ended(batch_id: str, env: dict[str, str], workers: Workers, timeout_s: float = 120) -> Any:
    def ended() -> dict[str, Any] | None:
        batch = _status(batch_id, env)
        return batch if batch["status"] in ("completed", "failed", "cancelled", "expired") else None

    return wait_for(ended, timeout_s, f"batch {batch_id} to end\n{workers.logs()}", 0.5)


def test_max_cost_stops_a_batch_within_the_in_flight_margin_and_accounts_for_every_request(
    tmp_path: Path, simulator: Any, redis_url: str
) -> None:
    simulator.configure(latency_ms=50)
    # few slots, many requests claimed (8 threads x 16 ids): only calls holding a slot may
    # set budget aside, or those waiting for one would use it up before anything is spent
    concurrency = 2
    env = deployment_env(tmp_path, simulator, redis_url, PROMPTQ_MAX_CONCURRENCY=str(concurrency))
    write_batch(tmp_path / "in.jsonl", 120)
    max_cost_usd = 0.05
    workers = Workers(env, tmp_path / "logs").start(1)
    try:
        batch_id = _submit(tmp_path / "in.jsonl", env, "--max-cost", str(max_cost_usd))
        batch = _ended(batch_id, env, workers)
    finally:
        workers.stop()

    counts = batch["request_counts"]
    assert batch["status"] == "completed"
    assert 0 < counts["completed"] < counts["total"] == 120
    assert counts["completed"] + counts["failed"] == counts["total"]
    assert [e["code"] for e in batch["errors"]["data"]] == ["budget_exceeded"]
    assert f"${max_cost_usd:g}" in batch["errors"]["data"][0]["message"]

    costs = [
        row[0]
        for row in _db(tmp_path).execute(
            "SELECT cost_usd FROM requests WHERE batch_id = ? AND status = 'succeeded'", (batch_id,)
        )
    ]
    # the guarantee: at most the calls in flight when the budget ran out go over it
    assert batch["cost_usd"] <= max_cost_usd + concurrency * max(costs)
    # and here each call's reservation (prompt + 1,024 output tokens) covers its real cost
    assert batch["cost_usd"] <= max_cost_usd
    assert abs(batch["cost_usd"] - sum(costs)) < 1e-9
    # the budget was spent, not given up early: at most the calls in flight's estimates
    # (prompt + 1,024 output tokens, $0.0046 at o1-mini's prices) were left over
    assert batch["cost_usd"] > max_cost_usd - concurrency * 0.0046

    shown = promptq("status", batch_id, env=env)
    assert shown.returncode == 0, shown.stderr
    said = " ".join(shown.stdout.split())
    assert "priority bulk, budget $0.05" in said
    assert "budget_exceeded: the batch reached its budget of $0.05" in said

    out = tmp_path / "out.jsonl"
    written = promptq("results", batch_id, "-o", str(out), env=env)
    assert written.returncode == 0, written.stderr
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert len(read_jsonl(out)) == counts["completed"]
    assert {e["error"]["code"] for e in errors} == {"budget_exceeded"}
    assert len(errors) == counts["failed"]
    # every call the upstream answered is a stored result, and nothing else was sent
    assert simulator.stats()["requests_total"] == counts["completed"]


def test_max_tokens_stops_a_batch_at_its_token_budget(
    tmp_path: Path, simulator: Any, redis_url: str
) -> None:
    env = deployment_env(tmp_path, simulator, redis_url, PROMPTQ_MAX_CONCURRENCY="4")
    write_batch(tmp_path / "in.jsonl", 40)
    workers = Workers(env, tmp_path / "logs").start(1)
    try:
        batch_id = _submit(tmp_path / "in.jsonl", env, "--max-tokens", "8000")
        batch = _ended(batch_id, env, workers)
    finally:
        workers.stop()
    assert batch["status"] == "completed"
    assert 0 < batch["request_counts"]["completed"] < 40
    assert batch["usage"]["total_tokens"] <= 8000
    assert batch["errors"]["data"][0]["code"] == "budget_exceeded"
    assert "8,000 tokens" in batch["errors"]["data"][0]["message"]


def test_an_interactive_request_goes_ahead_of_a_5000_request_bulk_backlog(
    tmp_path: Path, simulator: Any, redis_url: str
) -> None:
    latency_s = 0.3
    concurrency = 8
    simulator.configure(latency_ms=latency_s * 1000)
    env = deployment_env(tmp_path, simulator, redis_url, PROMPTQ_MAX_CONCURRENCY=str(concurrency))
    write_batch(tmp_path / "bulk.jsonl", 5000)
    one = {
        "custom_id": "urgent",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": MODEL, "input": "Answer this one now."},
    }
    (tmp_path / "one.jsonl").write_text(json.dumps(one) + "\n")
    workers = Workers(env, tmp_path / "logs").start(1)
    try:
        bulk_id = _submit(tmp_path / "bulk.jsonl", env)

        def bulk_running() -> bool:
            return _status(bulk_id, env)["request_counts"]["completed"] >= 3 * concurrency

        wait_for(bulk_running, 60, f"the bulk backlog to run\n{workers.logs()}", 0.2)
        urgent_id = _submit(tmp_path / "one.jsonl", env, "--priority", "interactive")
        urgent = _ended(urgent_id, env, workers, timeout_s=60)
        bulk_done_then = _status(bulk_id, env)["request_counts"]["completed"]
        promptq("cancel", bulk_id, env=env)
    finally:
        workers.stop()

    assert urgent["status"] == "completed"
    assert bulk_done_then < 1000  # it did not wait for the backlog
    (body, created_at) = (
        _db(tmp_path)
        .execute(
            "SELECT r.body, b.created_at FROM requests r JOIN batches b ON b.id = r.batch_id "
            "WHERE b.id = ?",
            (urgent_id,),
        )
        .fetchone()
    )
    submitted_at = datetime.fromisoformat(created_at).replace(tzinfo=UTC).timestamp()
    log = simulator.log()
    sha = hashlib.sha256(body.encode()).hexdigest()
    (call,) = [entry for entry in log if entry["body_sha"] == sha]
    # bulk calls that started while it waited: those admitted while it was being committed,
    # published, taken and claimed (a few slot turns on a loaded machine), then at most one
    # per slot; in the backlog's order it would have waited for thousands
    overtook = [e for e in log if submitted_at < e["t_start"] < call["t_start"]]
    assert len(overtook) <= 4 * concurrency, (len(overtook), call["t_start"] - submitted_at)
    waited = call["t_start"] - submitted_at
    print(f"interactive call started {waited / latency_s:.1f} upstream latencies after submit")


def test_nothing_is_sent_outside_the_window_and_the_rest_waits_for_it_to_open(
    tmp_path: Path, simulator: Any, redis_url: str
) -> None:
    now = datetime.now().astimezone()
    if now.second > 40:  # leave the window open long enough for work to start
        time.sleep(61 - now.second)
        now = datetime.now().astimezone()
    opened = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    closes = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    window = f"{opened:%H:%M}-{closes:%H:%M}"
    simulator.configure(latency_ms=200)
    env = deployment_env(tmp_path, simulator, redis_url, PROMPTQ_MAX_CONCURRENCY="4")
    write_batch(tmp_path / "in.jsonl", 2000)  # far more than fits before the window closes
    workers = Workers(env, tmp_path / "logs").start(1)
    try:
        batch_id = _submit(tmp_path / "in.jsonl", env, "--window", window)
        wait_for(lambda: time.time() > closes.timestamp() + 2, 90, "the window to close", 0.5)
        sent_at_close = simulator.stats()["requests_total"]
        time.sleep(3)
        sent_later = simulator.stats()["requests_total"]
        batch = _status(batch_id, env)
        waiting = (
            _db(tmp_path)
            .execute(
                "SELECT count(*), min(not_before), max(not_before) FROM requests "
                "WHERE batch_id = ? AND status = 'queued' AND not_before IS NOT NULL",
                (batch_id,),
            )
            .fetchone()
        )
        promptq("cancel", batch_id, env=env)
    finally:
        workers.stop()

    assert 0 < sent_at_close < 2000
    assert sent_later == sent_at_close  # paused: nothing goes out while the window is shut
    # a call admitted just before the close may start a moment after it, never later
    assert max(e["t_start"] for e in simulator.log()) < closes.timestamp() + 1.0
    assert batch["status"] == "in_progress"
    reopens = (closes - timedelta(minutes=1) + timedelta(days=1)).replace(
        minute=opened.minute, hour=opened.hour
    )
    assert waiting[0] > 0  # the ones the workers held when it closed wait for it to reopen
    for stamp in waiting[1:]:
        at = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
        assert at == reopens.astimezone(UTC)


def test_reuse_answers_repeats_of_earlier_successes_for_free_and_sends_only_the_new_ones(
    tmp_path: Path, simulator: Any, redis_url: str
) -> None:
    env = deployment_env(tmp_path, simulator, redis_url)
    write_batch(tmp_path / "first.jsonl", 10)
    write_batch(tmp_path / "second.jsonl", 14)  # the same 10 first lines, and 4 more
    workers = Workers(env, tmp_path / "logs").start(1)
    try:
        first = submit_and_wait(tmp_path / "first.jsonl", env, workers)
        again = promptq("submit", str(tmp_path / "second.jsonl"), "--reuse", env=env)
        assert again.returncode == 0, again.stderr
        assert "Queued 4 requests; 10 answered from earlier results." in again.stderr
        second = _ended(again.stdout.strip().splitlines()[-1], env, workers)
    finally:
        workers.stop()

    assert second["status"] == "completed"
    assert second["request_counts"] == {"total": 14, "completed": 14, "failed": 0}
    assert simulator.stats()["requests_total"] == 14  # 10 for the first batch, 4 new
    out = tmp_path / "out.jsonl"
    written = promptq("results", second["id"], "-o", str(out), env=env)
    assert written.returncode == 0, written.stderr
    lines = {line["custom_id"]: line for line in read_jsonl(out)}
    db = _db(tmp_path)
    originals = dict(
        db.execute("SELECT custom_id, id FROM requests WHERE batch_id = ?", (first["id"],))
    )
    for custom_id, original in originals.items():
        assert lines[custom_id]["reused_from"] == original
    assert all("reused_from" not in lines[f"doc-{i:04d}"] for i in range(10, 14))
    new_cost = db.execute(
        "SELECT sum(cost_usd) FROM requests WHERE batch_id = ? AND reused_from IS NULL",
        (second["id"],),
    ).fetchone()[0]
    assert new_cost > 0
    assert abs(second["cost_usd"] - new_cost) < 1e-9  # the reused answers cost nothing
