"""Webhooks end to end: real `promptq` commands and a real worker notify a local receiver."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobs import webhooks
from tests.deploy import Workers, deployment_env, promptq, wait_for
from tests.receiver import Hit, Receiver

SECRET = "whsec-e2e-" + "5" * 24
REQUESTS = 5


def write_batch(path: Path) -> None:
    with path.open("w") as f:
        for i in range(REQUESTS):
            body = {"model": "o1-mini-2024-09-12", "input": f"Summarise document {i}."}
            line = {"custom_id": f"doc-{i}", "method": "POST", "url": "/v1/responses", "body": body}
            f.write(json.dumps(line) + "\n")


def submitted(*args: str, env: dict[str, str]) -> str:
    done = promptq("submit", *args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def the_one_accepted(receiver: Receiver, event: str, workers: Workers) -> tuple[Hit, Any]:
    """The delivery the receiver took, after its refused first attempt; checked and parsed."""
    wait_for(receiver.accepted, 60, f"{event} to be delivered\n{workers.logs()}")
    [first, accepted] = receiver.hits  # the refused attempt, then the retry, and no more
    assert (first.status, accepted.status) == (500, 200)
    for hit in (first, accepted):
        assert webhooks.verify(SECRET, hit.body, hit.headers[webhooks.SIGNATURE_HEADER])
        assert hit.headers[webhooks.EVENT_HEADER] == event
    assert first.body == accepted.body  # the same event again, not a second one
    assert first.headers[webhooks.DELIVERY_HEADER] == accepted.headers[webhooks.DELIVERY_HEADER]
    body = json.loads(accepted.body)
    assert (body["object"], body["type"]) == ("event", event)
    return accepted, body["data"]


def test_a_receiver_gets_each_terminal_state_once_signed_even_when_its_first_attempt_fails(
    tmp_path: Path, simulator: Any, redis_url: str
) -> None:
    write_batch(tmp_path / "in.jsonl")
    env = deployment_env(
        tmp_path,
        simulator,
        redis_url,
        PROMPTQ_WEBHOOK_SECRET=SECRET,
        PROMPTQ_WEBHOOK_INTERVAL_S="0.2",
        PROMPTQ_WEBHOOK_BACKOFF_BASE_S="0.2",
    )
    workers = Workers(env, tmp_path / "logs").start(1)
    try:
        with Receiver(statuses=[500]) as on_completed, Receiver(statuses=[500]) as on_cancelled:
            completed_id = submitted(
                str(tmp_path / "in.jsonl"), "--webhook", on_completed.url, env=env
            )
            _, batch = the_one_accepted(on_completed, "batch.completed", workers)
            assert batch["id"] == completed_id
            assert (batch["object"], batch["status"]) == ("batch", "completed")
            assert batch["request_counts"] == {
                "total": REQUESTS,
                "completed": REQUESTS,
                "failed": 0,
            }
            shown = json.loads(promptq("status", completed_id, "--json", env=env).stdout)
            for field in ("completed_at", "output_file_id", "request_counts", "usage"):
                assert batch[field] == shown[field]

            # one that waits an hour to start, cancelled meanwhile
            later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            cancelled_id = submitted(
                str(tmp_path / "in.jsonl"),
                "--not-before",
                later,
                "--webhook",
                on_cancelled.url,
                env=env,
            )
            cancel = promptq("cancel", cancelled_id, env=env)
            assert cancel.returncode == 0, cancel.stderr
            _, batch = the_one_accepted(on_cancelled, "batch.cancelled", workers)
            assert (batch["id"], batch["status"]) == (cancelled_id, "cancelled")
            assert batch["cancelled_at"] is not None
            assert batch["request_counts"]["completed"] == 0

            time.sleep(1.5)  # once per state: more notifier passes send nothing further
            assert len(on_completed.hits) == len(on_cancelled.hits) == 2
    finally:
        workers.stop()
    assert workers.errors() == []
