"""Claims, leases and outcomes in the database: duplicates and late answers never count twice."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs import submit
from jobs.db import session_scope
from jobs.models import Batch, File, Request, utcnow
from jobs.settings import get_settings
from worker import store
from worker.store import Claimed, Outcome
from worker.usage import Usage


def make_batch(count: int) -> tuple[str, list[str]]:
    lines = [
        json.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "o1-mini", "input": f"p{i}"},
            }
        ).encode()
        for i in range(count)
    ]
    batch = submit.create_batch(lambda: lines, name="t.jsonl", enqueue=False)
    stmt = select(Request.id).where(Request.batch_id == batch.id).order_by(Request.line)
    with session_scope() as session:
        ids = list(session.scalars(stmt))
    return batch.id, ids


def success(c: Claimed, tokens: int = 10) -> Outcome:
    usage = Usage(tokens, 2, tokens * 2, tokens, tokens * 3)
    return Outcome(
        c, "succeeded", status_code=200, response_body='{"ok":true}', usage=usage, cost_usd=0.001
    )


def test_a_request_is_claimed_once_however_often_it_is_delivered(db: str) -> None:
    _, ids = make_batch(2)
    first = store.claim(ids, lease_s=60)
    assert sorted(c.id for c in first) == sorted(ids)
    assert all(c.attempt == 1 for c in first)
    assert store.claim(ids, lease_s=60) == []


def test_an_outcome_from_a_lease_that_was_taken_back_is_ignored(db: str) -> None:
    batch_id, ids = make_batch(1)
    (old,) = store.claim(ids, lease_s=-1)  # lease already over: its worker is presumed dead
    store.requeue([old.id], utcnow())
    (new,) = store.claim(ids, lease_s=60)
    assert new.attempt == 2
    store.record([success(old)])
    with session_scope() as session:
        assert session.get(Request, old.id).status == "running"  # type: ignore[union-attr]
    store.record([success(new), success(new)])
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        assert (batch.request_completed, batch.total_tokens) == (1, 30)


def test_outcomes_add_up_to_exact_batch_totals_and_finalize_the_batch(db: str) -> None:
    batch_id, ids = make_batch(3)
    claimed = store.claim(ids, lease_s=60)
    failed = Outcome(
        claimed[2], "failed", status_code=400, error_code="bad", error_message="upstream 400: no"
    )
    store.record([success(claimed[0], 10), success(claimed[1], 20)])
    with session_scope() as session:
        assert session.get(Batch, batch_id).status == "in_progress"  # type: ignore[union-attr]
    store.record([failed])
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        assert batch.status == "completed"
        assert (batch.request_completed, batch.request_failed) == (2, 1)
        assert batch.input_tokens == 30 and batch.total_tokens == 90
        assert batch.reasoning_tokens == 30 and batch.cached_input_tokens == 4
        assert abs(batch.cost_usd - 0.002) < 1e-12
        found = session.scalars(select(File).where(File.batch_id == batch_id))
        files = {f.purpose: f for f in found}
        assert batch.output_file_id == files["batch_output"].id
        assert batch.error_file_id == files["batch_error"].id
        assert files["batch_output"].size_bytes > 0


def test_a_retry_waits_in_the_database_until_it_is_due(db: str) -> None:
    _, ids = make_batch(1)
    (c,) = store.claim(ids, lease_s=60)
    later = utcnow() + timedelta(seconds=30)
    store.record([Outcome(c, "retry", status_code=503, error_message="busy", not_before=later)])
    assert store.claim(ids, lease_s=60) == []  # not due yet
    assert store.due_unsent(utcnow(), None, 100) == {}
    assert store.due_unsent(later + timedelta(seconds=1), None, 100) == {"bulk": ids}
    assert store.due_unsent(later + timedelta(seconds=1), None, 100) == {}  # marked as sent


def test_queued_requests_whose_messages_were_lost_are_found_once_stale(db: str) -> None:
    _, ids = make_batch(2)
    now = utcnow()
    assert store.due_unsent(now, None, 100) == {}  # they were sent at submission
    assert sorted(store.due_unsent(now, now + timedelta(seconds=1), 100)["bulk"]) == sorted(ids)


def test_expired_leases_are_found_and_requeued(db: str) -> None:
    _, ids = make_batch(2)
    store.claim(ids[:1], lease_s=-1)
    store.claim(ids[1:], lease_s=60)
    lost = store.expired_leases(utcnow())
    assert [row[0] for row in lost] == ids[:1]
    store.requeue([ids[0]], utcnow())
    assert store.due_unsent(utcnow(), None, 100) == {"bulk": ids[:1]}


def test_a_late_answer_counts_if_nobody_claimed_the_request_since_its_lease_was_taken_back(
    db: str,
) -> None:
    batch_id, ids = make_batch(1)
    (c,) = store.claim(ids, lease_s=-1)  # its worker stopped renewing (the database was down)
    store.requeue([c.id], utcnow())  # the sweeper took it back; its message is not yet taken
    store.record([success(c)])  # then the worker's answer arrives: it was paid, keep it
    assert store.claim(ids, lease_s=60) == []  # the message sent again finds it done
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        assert (batch.status, batch.request_completed, batch.total_tokens) == ("completed", 1, 30)


def test_the_upstream_key_is_scrubbed_from_everything_stored(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-scrub-me-0123456789"
    monkeypatch.setenv("COMETAPI_API_KEY", key)
    get_settings.cache_clear()
    _, ids = make_batch(2)
    ok, refused = store.claim(ids, lease_s=60)
    echoed = Outcome(
        ok,
        "succeeded",
        status_code=200,
        upstream_request_id=f"req_{key}",
        response_body=json.dumps({"echo": f"Bearer {key}"}),
    )
    bad = Outcome(refused, "failed", status_code=401, error_code=key, error_message=f"no {key}")
    store.record([echoed, bad])
    with session_scope() as session:
        rows = session.scalars(select(Request).where(Request.id.in_(ids)))  # type: ignore[attr-defined]
        stored = " ".join(str(value) for row in rows for value in row.model_dump().values())
    assert key not in stored
    assert "req_[redacted]" in stored and "Bearer [redacted]" in stored


def test_a_deferred_request_waits_uncounted_for_its_window_to_open(db: str) -> None:
    _, ids = make_batch(1)
    (c,) = store.claim(ids, lease_s=60)
    opens = utcnow() + timedelta(hours=3)
    store.record([Outcome(c, "deferred", not_before=opens)])
    with session_scope() as session:
        row = session.get(Request, ids[0])
        assert row is not None
        assert (row.status, row.attempts, row.not_before) == ("queued", 0, opens)
    assert store.due_unsent(utcnow(), None, 100) == {}
    assert store.due_unsent(opens, None, 100) == {"bulk": ids}
