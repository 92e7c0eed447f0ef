"""Results as a CSV table or a tree of answer files, and usage summed by model/day/key/batch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jobs import export, submit, usage
from jobs.db import session_scope
from jobs.errors import InputError
from worker import store
from worker.store import Outcome
from worker.usage import Usage


def run_batch(
    custom_ids: list[str],
    fail: set[str] = frozenset(),
    model: str = "o1-mini",
    owner: str = "local",
) -> str:
    """A batch whose requests ended as if workers ran them: answers echo the custom_id."""
    lines = [
        json.dumps(
            {
                "custom_id": c,
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": model, "input": c},
            }
        ).encode()
        for c in custom_ids
    ]
    batch = submit.create_batch(lambda: lines, name="t", owner=owner, enqueue=False)
    with session_scope() as session:
        from sqlalchemy import select

        from jobs.models import Request

        rows = session.execute(
            select(Request.id, Request.custom_id).where(Request.batch_id == batch.id)
        ).all()
    ids = {rid: cid for rid, cid in rows}
    outcomes = []
    for c in store.claim(list(ids), lease_s=60):
        cid = ids[c.id]
        if cid in fail:
            outcomes.append(
                Outcome(
                    c, "failed", status_code=400, error_code="bad", error_message=f"refused {cid}"
                )
            )
        else:
            body = {"output": [{"type": "message", "content": [{"text": f"answer {cid}"}]}]}
            outcomes.append(
                Outcome(
                    c,
                    "succeeded",
                    status_code=200,
                    response_body=json.dumps(body),
                    usage=Usage(10, 2, 20, 5, 30),
                    cost_usd=0.25,
                )
            )
    store.record(outcomes)
    return batch.id


def test_the_dir_format_mirrors_the_tree_and_joins_chunks_in_order(db: str, tmp_path: Path) -> None:
    batch_id = run_batch(
        ["src/a.py", "docs/big.md#1", "docs/big.md#2", "src/bad.py"], fail={"src/bad.py"}
    )
    with session_scope() as session:
        files, failed = export.write_tree(session, batch_id, tmp_path / "out")
    assert (files, failed) == (2, 1)
    assert (tmp_path / "out/src/a.py.answer.md").read_text() == "answer src/a.py"
    assert (tmp_path / "out/docs/big.md.answer.md").read_text() == (
        "answer docs/big.md#1\n\nanswer docs/big.md#2"
    )
    (error,) = [json.loads(x) for x in (tmp_path / "out/_errors.jsonl").read_text().splitlines()]
    assert error["custom_id"] == "src/bad.py" and error["message"] == "refused src/bad.py"


def test_the_dir_format_refuses_a_custom_id_that_leaves_the_tree(db: str, tmp_path: Path) -> None:
    batch_id = run_batch(["../escape.txt"])
    with session_scope() as session, pytest.raises(InputError, match="leaves the tree"):
        export.write_tree(session, batch_id, tmp_path / "out")
    assert not (tmp_path / "escape.txt.answer.md").exists()


def test_the_csv_format_puts_answers_and_usage_side_by_side(db: str, tmp_path: Path) -> None:
    batch_id = run_batch(["a", "b"], fail={"b"})
    with session_scope() as session:
        assert export.write_csv(session, batch_id, tmp_path / "r.csv") == 2
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert (rows[0]["custom_id"], rows[0]["answer"], rows[0]["total_tokens"]) == (
        "a",
        "answer a",
        "30",
    )
    assert (rows[1]["status"], rows[1]["error_message"], rows[1]["answer"]) == (
        "failed",
        "refused b",
        "",
    )


def test_usage_sums_the_stored_per_request_usage_by_each_grouping(db: str) -> None:
    first = run_batch(["a", "b", "c"], model="o1-mini", owner="team-a")
    second = run_batch(["d"], model="gpt-4o", owner="team-b")
    with session_scope() as session:
        by_model = {r["model"]: r for r in usage.summary(session, "model")}
        by_batch = {r["batch"]: r for r in usage.summary(session, "batch")}
        by_key = {r["key"]: r for r in usage.summary(session, "key")}
        (day,) = usage.summary(session, "day")
    assert by_model["o1-mini"]["requests"] == 3 and by_model["o1-mini"]["total_tokens"] == 90
    assert by_model["gpt-4o"]["reasoning_tokens"] == 5
    assert by_batch[first]["cost_usd"] == pytest.approx(0.75)
    assert by_batch[second]["cached_input_tokens"] == 2
    assert set(by_key) == {"team-a", "team-b"}
    assert day["requests"] == 4 and day["total_tokens"] == 120
