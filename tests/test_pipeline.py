"""The whole path, on real parts: the simulator as a separate process, real Redis, SQLite and
PostgreSQL, real `promptq` and `promptq worker` processes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from jobs.models import TOKEN_FIELDS
from tests.deploy import Workers, deployment_env, promptq, wait_for

MODEL = "o1-mini-2024-09-12"
USAGE_COLUMNS = TOKEN_FIELDS


def write_batch(path: Path, count: int, *, rejected: int = 0, flaky: int = 0) -> dict[str, str]:
    """A batch file; returns custom_id -> prompt. Rejected lines carry o1-mini-refused params."""
    prompts: dict[str, str] = {}
    with path.open("w") as f:
        for i in range(count):
            custom_id = f"doc-{i:04d}"
            prompt = f"Summarise document {i}: the number {i * 7919} is prime-ish."
            body: dict[str, Any] = {"model": MODEL, "input": prompt}
            if i < rejected:
                body["temperature"] = 0.3
            elif i < rejected + flaky:
                prompt += " #sim:fail=500*1"
                body["input"] = prompt
            prompts[custom_id] = prompt
            line = {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}
            f.write(json.dumps(line) + "\n")
    return prompts


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def answer_text(body: dict[str, Any]) -> str:
    for item in body["output"]:
        if item["type"] == "message":
            return str(item["content"][0]["text"])
    raise AssertionError(f"no message in {body}")


def check_results(
    output: Path, errors: Path, prompts: dict[str, str], rejected: int
) -> dict[str, dict[str, int]]:
    """Every line answers its own request; returns custom_id -> the usage the upstream sent."""
    outputs = read_jsonl(output)
    failures = read_jsonl(errors)
    assert len(outputs) == len(prompts) - rejected
    assert len(failures) == rejected
    reported: dict[str, dict[str, int]] = {}
    for line in outputs:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert answer_text(body) == "ECHO: " + prompts[line["custom_id"]]
        assert line["id"].startswith("batch_req_")
        usage = body["usage"]
        reported[line["custom_id"]] = {
            "input_tokens": usage["input_tokens"],
            "cached_input_tokens": usage["input_tokens_details"]["cached_tokens"],
            "output_tokens": usage["output_tokens"],
            "reasoning_tokens": usage["output_tokens_details"]["reasoning_tokens"],
            "total_tokens": usage["total_tokens"],
        }
    for line in failures:
        assert line["response"]["status_code"] == 400
        assert "Unsupported parameter" in line["error"]["message"]
        assert "temperature" in line["error"]["message"]
    return reported


def check_usage(
    batch: dict[str, Any], stored: dict[str, dict[str, int]], reported: dict[str, dict[str, int]]
) -> None:
    """Stored per-request usage is what the upstream reported; batch totals are their sum."""
    for custom_id, usage in reported.items():
        assert stored[custom_id] == usage, custom_id
    assert any(u["reasoning_tokens"] for u in reported.values())
    totals = {name: sum(u[name] for u in stored.values()) for name in USAGE_COLUMNS}
    assert batch["usage"] == {
        "input_tokens": totals["input_tokens"],
        "input_tokens_details": {"cached_tokens": totals["cached_input_tokens"]},
        "output_tokens": totals["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": totals["reasoning_tokens"]},
        "total_tokens": totals["total_tokens"],
    }
    assert batch["cost_usd"] > 0


def sent_once(simulator: Any, count_400: int) -> None:
    """Requests the upstream refused with 400 were each sent exactly once."""
    refused = [entry for entry in simulator.log() if entry["status"] == 400]
    assert len(refused) == count_400
    assert len({entry["body_sha"] for entry in refused}) == count_400


def test_run_against_a_configured_upstream_answers_every_request_with_its_own_result(
    tmp_path: Path, simulator: Any
) -> None:
    prompts = write_batch(tmp_path / "in.jsonl", 60, rejected=3, flaky=4)
    env = {
        "PROMPTQ_UPSTREAM_BASE_URL": simulator.base_url,
        "COMETAPI_API_KEY": simulator.key,
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
        "PROMPTQ_SWEEP_INTERVAL_S": "0.5",
    }
    done = promptq("run", "in.jsonl", "-o", "out.jsonl", env=env, cwd=tmp_path, timeout_s=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "simulator" not in done.stderr  # a key was given: the real upstream setting is used
    assert "Results: out.jsonl" in done.stdout

    reported = check_results(tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl", prompts, 3)
    db = sqlite3.connect(tmp_path / "data" / "promptq.db")
    stored = {
        row[0]: dict(zip(USAGE_COLUMNS, row[1:], strict=True))
        for row in db.execute(
            f"SELECT custom_id, {', '.join(USAGE_COLUMNS)} FROM requests WHERE status='succeeded'"
        )
    }
    attempts = dict(db.execute("SELECT custom_id, attempts FROM requests"))
    assert [attempts[f"doc-{i:04d}"] for i in range(3)] == [1, 1, 1]
    assert [attempts[f"doc-{i:04d}"] for i in range(3, 7)] == [2, 2, 2, 2]
    (batch_id,) = db.execute("SELECT id FROM batches").fetchone()
    status = promptq("status", batch_id, "--json", env=env, cwd=tmp_path)
    batch = json.loads(status.stdout)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 60, "completed": 57, "failed": 3}
    check_usage(batch, stored, reported)
    sent_once(simulator, 3)


def test_submit_status_and_results_work_with_postgresql_and_two_workers(
    tmp_path: Path, simulator: Any, redis_url: str, postgres_server: Any
) -> None:
    prompts = write_batch(tmp_path / "in.jsonl", 200, rejected=5, flaky=10)
    env = {
        "PROMPTQ_UPSTREAM_BASE_URL": simulator.base_url,
        "COMETAPI_API_KEY": simulator.key,
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
        "PROMPTQ_REDIS_URL": redis_url,
        "PROMPTQ_DATABASE_URL": postgres_server.create_database("pipeline"),
        "PROMPTQ_SWEEP_INTERVAL_S": "0.5",
    }
    upgraded = promptq("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    workers = Workers(env, tmp_path / "logs").start(2)
    try:
        submitted = promptq("submit", str(tmp_path / "in.jsonl"), env=env)
        assert submitted.returncode == 0, submitted.stderr
        batch_id = submitted.stdout.strip().splitlines()[-1]
        assert batch_id.startswith("batch_")

        def finished() -> dict[str, Any] | None:
            shown = promptq("status", batch_id, "--json", env=env)
            batch = json.loads(shown.stdout)
            return batch if batch["status"] == "completed" else None

        batch = wait_for(finished, 120, f"batch {batch_id} to complete\n{workers.logs()}", 1.0)
    finally:
        workers.stop()
    assert workers.errors() == []
    watched = promptq("watch", batch_id, env=env)
    assert watched.returncode == 0 and f"{batch_id}: completed" in watched.stdout
    shown = promptq("status", batch_id, env=env).stdout
    assert "195 succeeded" in shown and "5 failed" in shown
    assert "effective concurrency 16 of 16" in shown
    assert batch["request_counts"] == {"total": 200, "completed": 195, "failed": 5}
    assert batch["output_file_id"] and batch["error_file_id"]
    for stamp in ("created_at", "in_progress_at", "finalizing_at", "completed_at"):
        assert isinstance(batch[stamp], int)

    fetched = promptq(
        "results",
        batch_id,
        "-o",
        str(tmp_path / "out.jsonl"),
        "--errors",
        str(tmp_path / "err.jsonl"),
        env=env,
    )
    assert fetched.returncode == 0, fetched.stderr
    reported = check_results(tmp_path / "out.jsonl", tmp_path / "err.jsonl", prompts, 5)

    from sqlalchemy import create_engine, text

    engine = create_engine(env["PROMPTQ_DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT custom_id, {', '.join(USAGE_COLUMNS)} FROM requests "
                "WHERE status = 'succeeded'"
            )
        )
        stored = {r[0]: dict(zip(USAGE_COLUMNS, r[1:], strict=True)) for r in rows}
    engine.dispose()
    check_usage(batch, stored, reported)
    sent_once(simulator, 5)


def test_a_bad_file_is_refused_with_its_line_and_nothing_is_written_or_queued(
    tmp_path: Path, redis_url: str, redis_server: Any
) -> None:
    path = tmp_path / "bad.jsonl"
    write_batch(path, 5)
    with path.open("a") as f:
        f.write(
            '{"custom_id": "doc-0001", "method": "POST", "url": "/v1/responses", '
            '"body": {"model": "m"}}\n'
        )
        f.write('{"custom_id": "x", "method": "GET", "url": "/v1/responses", "body": {}}\n')
    env = {
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
        "PROMPTQ_REDIS_URL": redis_url,
    }
    refused = promptq("submit", str(path), env=env)
    assert refused.returncode == 2
    assert f"{path}: line 6: duplicate custom_id 'doc-0001' (first on line 2)" in refused.stderr
    assert f"{path}: line 7: 'method' must be \"POST\"" in refused.stderr
    assert "Nothing was submitted" in refused.stderr
    assert not (tmp_path / "data" / "promptq.db").exists()
    assert redis_server.client().dbsize() == 0


def test_run_builds_requests_from_a_template_over_a_tree_of_files(
    tmp_path: Path, simulator: Any
) -> None:
    for n in range(12):
        folder = tmp_path / "docs" / f"part{n % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"note{n}.md").write_text(f"Note {n}: {{braces}} stay as they are.\n")
    (tmp_path / "docs" / "logo.png").write_bytes(b"\x89PNG\x00")
    (tmp_path / "prompt.txt").write_text("Summarise {name}:\n{text}")
    env = {
        "PROMPTQ_UPSTREAM_BASE_URL": simulator.base_url,
        "COMETAPI_API_KEY": simulator.key,
        "PROMPTQ_DATA_DIR": str(tmp_path / "data"),
    }
    args = ("run", "-o", "out.jsonl", "--template", "prompt.txt", "--model", MODEL)
    refused = promptq(*args, "--files", "docs/**/*", env=env, cwd=tmp_path)
    assert refused.returncode == 2
    assert "docs/logo.png: binary file" in refused.stderr
    done = promptq(*args, "--files", "docs/**/*.md", env=env, cwd=tmp_path, timeout_s=120)
    assert done.returncode == 0, done.stderr
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert len(lines) == 12
    for line in lines:
        path = Path(line["custom_id"])
        expected = f"ECHO: Summarise {path.name}:\n" + (tmp_path / path).read_text()
        assert answer_text(line["response"]["body"]) == expected

    db = sqlite3.connect(tmp_path / "data" / "promptq.db")
    (batch_id,) = db.execute("SELECT id FROM batches WHERE status = 'completed'").fetchone()
    tree = promptq("results", batch_id, "--format", "dir", "-o", "answers", env=env, cwd=tmp_path)
    assert tree.returncode == 0, tree.stderr
    written = sorted(
        p.relative_to(tmp_path / "answers") for p in (tmp_path / "answers").rglob("*.answer.md")
    )
    assert written == sorted(Path(line["custom_id"] + ".answer.md") for line in lines)


def test_nothing_reaches_the_upstream_before_not_before(
    tmp_path: Path, simulator: Any, redis_url: str
) -> None:
    import time
    from datetime import UTC, datetime, timedelta

    write_batch(tmp_path / "in.jsonl", 20)
    env = deployment_env(tmp_path, simulator, redis_url)
    workers = Workers(env, tmp_path / "logs").start(1)
    try:
        start = datetime.now(UTC) + timedelta(seconds=6)
        submitted = promptq(
            "submit", str(tmp_path / "in.jsonl"), "--not-before", start.isoformat(), env=env
        )
        assert submitted.returncode == 0, submitted.stderr
        assert "Nothing is sent before" in submitted.stderr
        batch_id = submitted.stdout.strip().splitlines()[-1]
        time.sleep(3)
        assert simulator.stats()["requests_total"] == 0  # workers are up, but it is too early

        def completed() -> bool:
            shown = promptq("status", batch_id, "--json", env=env)
            return json.loads(shown.stdout)["status"] == "completed"

        wait_for(completed, 60, f"batch {batch_id} to complete\n{workers.logs()}", 0.5)
    finally:
        workers.stop()
    first_call = min(entry["t_start"] for entry in simulator.log())
    assert first_call >= start.timestamp()
    assert len(simulator.log()) == 20
